"""asyncio: await an event's results; async def handlers overlap while they await."""

import asyncio
import time

from busmp import Dispatcher, Event, EventStore, Result


async def fetch(ctx, ev):  # awaited on the worker process's event loop
    await asyncio.sleep(0.1)  # I/O: other events' handlers run meanwhile
    return Result("fetched", ev.data.upper())


d = Dispatcher()
d.register("fetch", fetch)


async def main():
    async with EventStore(d, workers=2) as store:  # drains on exit, without blocking the loop
        print(await store.asubmit(Event("fetch", "one")))  # [Result(message='fetched', value='ONE')]
        started = time.monotonic()
        results = await asyncio.gather(*(store.asubmit(Event("fetch", f"url{i}")) for i in range(100)))
        print(len(results), results[-1][0].value)  # 100 URL99
        print(time.monotonic() - started < 5)  # True
        for i in range(10):
            await store.asubscribe(Event("fetch", f"more{i}"))
        await store.apublish()
        await store.aflush()
        print(store.metrics())  # Metrics(published=111, processed=111, errors=0)


if __name__ == "__main__":  # worker processes import this module: start them only here
    asyncio.run(main())
