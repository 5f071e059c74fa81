"""What the explorer's HTTP layer costs on top of the Python API, on the demo's digits CNN.

For each method, one digit and its predicted class, in one process and interleaved:

* ``python``: ``method.attribute(x, target=t)`` plus ``tdlens.metrics.deletion`` on the class
  probabilities: the work one uncached ``POST /api/attribute`` does;
* ``api``: that request over HTTP on 127.0.0.1 with the answer cache cleared before each call
  (JSON in and out, the worker-thread hand-off, the server);
* ``api cached``: the same request answered from the cache.

Then 32 distinct requests from 32 threads at once against the same 32 one after another
(each on a cleared cache): one worker thread runs the model, so threads do not speed up the
model work; the ratio shows that queueing costs nothing either.

Run: .venv/bin/python benchmarks/explorer.py   (prints its ratio table last)
"""

from __future__ import annotations

import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from _common import environment_lines, format_table, load_line, paired_ratio, time_interleaved

import tdlens
from tdlens.app.demo import digits_explorer

METHODS = {
    "Saliency": {},
    "IntegratedGradients": {"n_steps": 32},
    "Occlusion": {"sliding_window_shapes": (1, 2, 2)},
}


def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url + "api/attribute",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)


def main() -> None:
    torch.set_num_threads(1)
    app = digits_explorer(methods=METHODS)
    url = app.start(port=0)
    sample, x = 5, app.sample(5)[None]
    target = int(app.model(x).argmax())

    def probabilities(inputs: torch.Tensor) -> torch.Tensor:
        return app.model(inputs).softmax(-1)

    rows, ratios = [], []
    for name, args in METHODS.items():
        method = getattr(tdlens, name)(app.model)
        body = {"sample": sample, "method": name, "target": target, "args": {}}

        def python(method: Any = method, args: dict = args) -> None:
            attr = method.attribute(x, target=target, **args)
            tdlens.metrics.deletion(probabilities, x, attr, target=target, feature_mask="pixels")

        def api(body: dict = body) -> None:
            app._cache.clear()  # an uncached request every time
            post(url, body)

        def cached(body: dict = body) -> None:
            post(url, body)

        timings = time_interleaved(
            {"python": python, "api": api, "api cached": cached}, warmup=2, repeat=15
        )
        rows.append(
            [name, *(f"{timings[v].median * 1e3:.2f} ms" for v in ("python", "api", "api cached"))]
        )
        ratios.append([name, f"{paired_ratio(timings, 'api', 'python'):.2f}"])

    jobs = [
        {"sample": s, "method": name, "target": None, "args": {}}
        for s in range(11)
        for name in METHODS
    ][:32]

    def serial() -> None:
        app._cache.clear()
        for job in jobs:
            post(url, job)

    def concurrent() -> None:
        app._cache.clear()
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(lambda job: post(url, job), jobs))

    burst = time_interleaved({"serial": serial, "concurrent": concurrent}, warmup=1, repeat=7)
    app.stop()

    print("\n".join(environment_lines()))
    print(load_line())
    print()
    print(format_table(["method (one digit)", "python", "api", "api cached"], rows))
    print()
    print(
        f"32 requests: serial {burst['serial'].median * 1e3:.0f} ms, "
        f"32 threads at once {burst['concurrent'].median * 1e3:.0f} ms"
    )
    print()
    ratios.append(["32 threads / 32 serial", f"{paired_ratio(burst, 'concurrent', 'serial'):.2f}"])
    print(format_table(["uncached API time / Python time (paired median)", "ratio"], ratios))


if __name__ == "__main__":
    main()
