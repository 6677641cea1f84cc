"""The bank demo (`contend demo`'s workload) with the operations console served beside it.

    python ops/console_demo.py                       # open http://127.0.0.1:8089/console/
    python ops/console_demo.py --screenshot docs/console.png

Deferred, lazy and none run at once on one runtime whose fake clock runs about 120 times faster
than real time, so the console's last-hour chart fills in about 30 seconds. With --screenshot,
headless Chromium (ops/chromium.py) saves the overview near the end of the run and the script
exits; otherwise the console stays up until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import sys
from pathlib import Path

from contend import FakeClock, Runtime
from contend.console import make_console
from contend.http import make_app, start_server
from contend_demo import DemoConfig, simulate

STRATEGIES = ("deferred", "lazy", "none")


def screenshot(url: str, path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from chromium import chromium

    with chromium(width=1400, height=900) as browser:
        browser.get(url)
        height = browser.execute_script("return document.documentElement.scrollHeight")
        browser.set_window_size(1400, int(height) + 100)
        browser.get(url)
        browser.save_screenshot(str(path))


async def main(args: argparse.Namespace) -> None:
    rt = Runtime(clock=FakeClock(), memory_probe=lambda: 0.35, name="console-demo")
    console = make_console(rt, token=args.token, refresh_seconds=5)
    server = await start_server(args.host, args.port, app=make_app(rt, console=console))
    port = server.sockets[0].getsockname()[1]
    url = f"http://{args.host}:{port}/console/"
    print(f"console: {url} (token: {args.token})", flush=True)
    console.start()
    acceleration = 120.0 / len(STRATEGIES)  # each run advances the shared clock
    cfg = DemoConfig(duration=args.seconds, acceleration=acceleration, isolate=False)
    runs = [asyncio.create_task(simulate(rt, s, cfg)) for s in STRATEGIES]
    try:
        if args.screenshot:
            await asyncio.sleep(max(1.0, args.seconds - 3))
            await asyncio.get_running_loop().run_in_executor(
                None, screenshot, url, Path(args.screenshot)
            )
            print(f"wrote {args.screenshot}", flush=True)
        results = await asyncio.gather(*runs)
        for r in results:
            print(f"{r.strategy:>9}: {r.operations:,} calls, {r.zombies_end:,} zombies left")
        if not args.screenshot:
            print("workload done; the console stays up (Ctrl-C to stop)", flush=True)
            await asyncio.Event().wait()
    finally:
        server.close()
        await console.aclose()
        await rt.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--seconds", type=float, default=40.0, help="workload duration")
    parser.add_argument("--token", default=secrets.token_urlsafe(18), help="console token")
    parser.add_argument("--screenshot", metavar="PNG", help="save the overview, then exit")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(parser.parse_args()))
