"""The README's API reference names every public name, and documents signatures that are true.

Checked against the package itself: every name of ``busmp.__all__``, and every member of the
public contract (the classes' methods and attributes users call), must appear in the README's
"API reference" section, a class's members under that class's heading. Where the reference
writes a call, ``name(params)``, the parameters (names, kinds, defaults) must be the real ones.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

import busmp

README = Path(__file__).resolve().parent.parent / "README.md"

#: The contract's members per class (the classes' other public-looking names are internal).
#: A member listed under LATER is checked once the class has it: the reference then needs it too.
MEMBERS: dict[str, list[str]] = {
    "EventStore": [
        "subscribe", "subscribe_many", "publish", "register_batch", "use", "on_before", "on_after",
        "on_error", "flush", "drain", "close", "metrics", "stats", "schedule", "schedule_after",
        "begin_transaction", "dlq",
    ],
    "DeadLetterQueue": ["entries", "drain", "replay"],
    "Dispatcher": ["register", "on", "handlers"],
    "Transaction": ["publish", "commit", "rollback"],
    "Timer": ["cancel", "when"],
    "Context": ["value", "with_value", "with_timeout", "with_deadline", "deadline", "remaining", "expired", "emit"],
}
LATER: dict[str, list[str]] = {
    "EventStore": ["submit", "asubmit", "asubscribe", "apublish", "aflush", "adrain", "name"],
}
#: Names users call to make one: the reference must write their call, with the true parameters.
#: (Every other name is checked too wherever the reference writes it as a call.)
CONSTRUCTED = {"Event", "Result", "Context", "Dispatcher", "EventStore", "DeadLetterQueue"}
#: The reference heading under which each class's members are listed.
HEADINGS = {"EventStore": "EventStore", "DeadLetterQueue": "DeadLetter and DeadLetterQueue",
            "Dispatcher": "Dispatcher", "Transaction": "Transaction", "Timer": "Timer", "Context": "Context"}


def reference(text: str | None = None) -> str:
    text = README.read_text(encoding="utf-8") if text is None else text
    match = re.search(r"^## API reference\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, "README has no '## API reference' section; it lists every public name of busmp"
    return match.group(1)


def subsection(ref: str, heading: str) -> str:
    match = re.search(rf"^### {re.escape(heading)}\n(.*?)(?=^### |\Z)", ref, re.S | re.M)
    assert match, f"the API reference has no '### {heading}' subsection"
    return match.group(1)


def code_spans(text: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", text)


def mentions(spans: list[str], name: str) -> list[str]:
    """Code spans that start with ``name`` (or ``something.name``): ``name(``, ``name ->``, ``name``."""
    pattern = re.compile(rf"^(?:[A-Za-z_][\w]*\.)*{re.escape(name)}(?![\w])")
    return [span for span in spans if pattern.match(span)]


def documented_params(span: str, name: str) -> ast.arguments | None:
    """The parameters of a span written as a call, ``name(a, b=1, *, c=None) -> X``."""
    call = re.match(rf"^(?:[A-Za-z_]\w*\.)*{re.escape(name)}(\(.*\))", span.split(" -> ")[0])
    if call is None:
        return None
    tree = ast.parse(f"def f{call.group(1)}: pass")
    fn = tree.body[0]
    assert isinstance(fn, ast.FunctionDef)
    return fn.args


def signature_problems(documented: ast.arguments, real: inspect.Signature, where: str) -> list[str]:
    params = [p for p in real.parameters.values() if p.name != "self"]
    doc_positional = documented.posonlyargs + documented.args
    doc: list[tuple[str, str, ast.expr | None]] = []
    defaults = [None] * (len(doc_positional) - len(documented.defaults)) + list(documented.defaults)
    doc += [(a.arg, "positional", d) for a, d in zip(doc_positional, defaults)]
    if documented.vararg:
        doc.append((documented.vararg.arg, "*args", None))
    doc += [(a.arg, "keyword", d) for a, d in zip(documented.kwonlyargs, documented.kw_defaults)]
    if documented.kwarg:
        doc.append((documented.kwarg.arg, "**kwargs", None))
    kinds = {inspect.Parameter.POSITIONAL_ONLY: "positional", inspect.Parameter.POSITIONAL_OR_KEYWORD: "positional",
             inspect.Parameter.VAR_POSITIONAL: "*args", inspect.Parameter.KEYWORD_ONLY: "keyword",
             inspect.Parameter.VAR_KEYWORD: "**kwargs"}
    actual = [(p.name, kinds[p.kind]) for p in params]
    if [(n, k) for n, k, _ in doc] != actual:
        return [f"{where}: the reference writes ({', '.join(f'{n} [{k}]' for n, k, _ in doc)}) "
                f"but the code has ({', '.join(f'{n} [{k}]' for n, k in actual)})"]
    problems = []
    for (name, _, expr), param in zip(doc, params):
        has_default = param.default is not inspect.Parameter.empty
        if (expr is not None) != has_default:
            problems.append(f"{where}: parameter {name!r} {'has' if has_default else 'has no'} default in the code")
        elif expr is not None:
            # a default as the README writes it, evaluated among busmp's names
            value = eval(compile(ast.Expression(expr), "<reference>", "eval"), vars(busmp))
            if value != param.default:
                problems.append(f"{where}: {name}={ast.unparse(expr)} in the reference, {param.default!r} in the code")
    return problems


def check_reference(text: str | None = None) -> list[str]:
    """Every problem with the API reference: missing names, wrong signatures."""
    ref = reference(text)
    spans = code_spans(ref)
    problems = []
    for name in busmp.__all__:
        found = mentions(spans, name)
        if not found:
            problems.append(f"busmp.{name} is missing from the README's API reference")
            continue
        obj = getattr(busmp, name)
        calls = [params for span in found if (params := documented_params(span, name)) is not None]
        if not calls and (inspect.isfunction(obj) or name in CONSTRUCTED):
            problems.append(f"busmp.{name}: the API reference writes no call `{name}(...)` with its parameters")
        for params in calls[:1]:
            problems += signature_problems(params, inspect.signature(obj), f"busmp.{name}")
    for cls_name, members in MEMBERS.items():
        cls = getattr(busmp, cls_name)
        section_spans = code_spans(subsection(ref, HEADINGS[cls_name]))
        present = [m for m in LATER.get(cls_name, []) if hasattr(cls, m)]
        for member in members + present:
            found = mentions(section_spans, member)
            if not found:
                problems.append(f"{cls_name}.{member} is missing under '### {HEADINGS[cls_name]}' in the API reference")
                continue
            attr = inspect.getattr_static(cls, member, None)
            if inspect.isfunction(attr):
                calls = [p for span in found if (p := documented_params(span, member)) is not None]
                if not calls:
                    problems.append(f"{cls_name}.{member}: the API reference writes no call `{member}(...)`")
                for params in calls[:1]:
                    problems += signature_problems(params, inspect.signature(attr), f"{cls_name}.{member}")
    return problems


def test_the_contract_members_exist():
    """The lists above name real members (a typo would make the reference check vacuous)."""
    missing = [f"{cls}.{m}" for cls, members in MEMBERS.items() for m in members
               if not hasattr(getattr(busmp, cls), m)
               and m not in getattr(getattr(busmp, cls), "__dataclass_fields__", {})
               and m not in inspect.signature(getattr(busmp, cls)).parameters]
    assert not missing, f"not members of busmp's classes: {missing}"


def listed_members(ref: str, heading: str) -> list[str]:
    """The member each table row of a class's subsection documents (its first code span)."""
    names = []
    for span in re.findall(r"^\| `([^`]+)`", subsection(ref, heading), re.M):
        match = re.match(r"^(?:[A-Za-z_]\w*\.)?([A-Za-z_]\w*)", span)
        if match and not span.startswith("with "):
            names.append(match.group(1))
    return names


def test_every_member_the_reference_lists_exists():
    """The other way round: a row for a member the code no longer has is a stale row."""
    ref = reference()
    with busmp.EventStore(busmp.Dispatcher(), 2) as store:  # instance attributes count (store.dlq)
        instances: dict[str, object] = {"EventStore": store}
    stale = [f"{cls_name}.{name}" for cls_name, heading in HEADINGS.items()
             for name in listed_members(ref, heading)
             if name not in busmp.__all__ and not hasattr(getattr(busmp, cls_name), name)
             and not hasattr(instances.get(cls_name), name)]
    assert not stale, f"the README's API reference documents members busmp does not have: {stale}; remove their rows"


def test_the_api_reference_names_every_public_name_with_its_true_signature():
    problems = check_reference()
    assert not problems, "fix the README's API reference:\n" + "\n".join(problems)


@pytest.mark.parametrize("name", ["Stats", "with_retry"])
def test_the_check_fails_when_a_public_name_is_left_out(name):
    """Each name found above is found on its own: removing its rows from the reference is noticed."""
    text = README.read_text(encoding="utf-8")
    ref = reference(text)
    stripped = "\n".join(line for line in ref.splitlines() if not re.search(rf"`{name}\b", line))
    stripped = re.sub(rf"`{name}\b[^`]*`", "", stripped)
    problems = check_reference(text.replace(ref, stripped))
    assert any(f"busmp.{name} is missing" in p for p in problems), problems


def test_the_check_fails_when_a_signature_is_wrong():
    text = README.read_text(encoding="utf-8")
    wrong = text.replace("`with_retry(retries, backoff=None) -> Middleware`",
                         "`with_retry(retries, delay=None) -> Middleware`")
    assert wrong != text, "the reference's with_retry row changed; update this test's sample"
    assert any("busmp.with_retry" in p for p in check_reference(wrong))
    wrong = text.replace("policy=DROP_OLDEST, *", "policy=BLOCK, *")
    assert wrong != text, "the reference's EventStore signature changed; update this test's sample"
    assert any("policy=BLOCK" in p for p in check_reference(wrong))
