"""The app's benchmark scripts (latency, upload memory, the soak) run end to end against a real app on a small
subset of the real sample and print their tables. A file of their own, apart from ``test_bench.py``, so that the
two CI workers (``--dist loadfile``) can share the benchmark tests.

Timings are not asserted (they are measurements, not behaviour); what is: the app benchmark counts one forward
per model per request, every hostile upload is answered or refused as its row says, and the soak fails no request.
"""

import os
import tempfile
from pathlib import Path

import pytest
from helpers import make_subset, markdown_tables, run_bench

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def subset(tmp_path_factory, sample_dir) -> Path:
    return make_subset(tmp_path_factory.mktemp("bench-app-data"), sample_dir, per_class=8)


def test_app_latency_counts_one_forward_per_model_and_times_both_clients(subset):
    out = run_bench(
        "app_latency.py",
        "--data",
        str(subset),
        "--models",
        "alexnet,logreg",
        "--image-size",
        "64",
        "--rounds",
        "1",
        "--requests",
        "3",
    )
    in_process, transport, app = markdown_tables(out)
    assert [r["model"] for r in in_process] == ["alexnet", "logreg", "all together"]
    assert [r["forwards per request"] for r in in_process] == ["1", "1", "2"]
    assert [r["python app.py, /analyse through"] for r in transport] == ["HTTP API", "gradio_client"]
    for r in transport:
        assert float(r["first probabilities ms"]) <= float(r["all heat maps ms"])
        assert float(r["do-nothing app: first ms"]) > 0
    assert "target ≤ 15 s" in app[0]["value"] and app[3]["value"].endswith("target < 5%)")


def test_upload_memory_sends_every_input_and_tabulates_peaks_cpu_and_the_wait_of_an_ordinary_request(subset):
    out = run_bench("upload_memory.py", "--data", str(subset), "--side", "3000", "--frames", "2", "--image-size", "64")
    rows, waits = markdown_tables(out)
    names = [r["upload"] for r in rows]
    assert names[0] == "ordinary X-ray (sample PNG)" and "DICOM, 2 frames of 2048²" in names
    assert names[-2:] == ["the four worst accepted at once", "four hostile files at once"]
    accepted = [r for r in rows[1:-2] if r["answer"].startswith("result")]
    refused = [r for r in rows[1:-2] if r["answer"].startswith("refused: “")]
    assert len(accepted) == 7 and len(refused) == 7, names  # the script stops when one is answered otherwise
    assert any("inflating to 1 GiB" in r["upload"] for r in refused)
    for r in rows[1:-2]:  # each judged against its targets
        assert r["CPU s (≤ 10)"][-1] in "✓✗" and float(r["CPU s (≤ 10)"].split()[0]) >= 0
        assert r["over the ordinary request MB (≤ 300)"][-1] in "✓✗" and float(r["peak growth MB"]) >= 0
    assert rows[-2]["peak growth MB"].endswith("(≤ 1500)") and rows[-1]["retained MB"].endswith("(≤ 100)")
    assert [w["when"] for w in waits] == ["idle (median of 5)", "while the 4 worst accepted uploads run"]
    assert "(≤ 2 × " in waits[1]["target"] and float(waits[1]["seconds"]) > 0


@pytest.fixture
def scratch():
    """A temporary folder of its own for a benchmark (its ``TMPDIR``), with a short path: Chromium puts its sockets
    there, and a socket's path may not be longer than 107 bytes — so in the system's temp folder, not the tests'
    own (:func:`conftest.system_temp`, deeper still under pytest-xdist)."""
    with tempfile.TemporaryDirectory(prefix="cxr-test-", dir=os.environ.get("TMPDIR") or "/tmp") as folder:
        yield Path(folder)


def test_app_soak_uses_the_app_as_visitors_do_and_tabulates_memory_cache_and_latency(subset, tmp_path, scratch):
    from cxr.commands.train import main as train_main

    models = []
    for name, args in {"lite0": ["--image-size", "64"], "logreg": ["--image-size", "24"]}.items():
        model = "tf_efficientnet_lite0" if name == "lite0" else name
        out = tmp_path / name
        assert (
            train_main([*args, "--model", model, "--data", str(subset), "--output-dir", str(out), "--epochs", "1"]) == 0
        )
        models.append(str(out / "model"))
    # a short soak whose cache sweep runs several times: every 2 s, files older than 4 s
    flags = [
        "--minutes",
        "0.75",
        "--request-every",
        "1",
        "--page-every",
        "20",
        "--sample-every",
        "3",
        "--memory-every",
        "1",
    ]
    out = run_bench(
        "app_soak.py",
        *flags,
        *["--warm-up", "10", "--window", "10", "--cache-sweep", "2,4"],
        *["--models", ",".join(models), "--examples", str(subset)],
        env={"TMPDIR": str(scratch)},
    )
    left = list(scratch.glob("cxr-*"))  # the log is kept when a request or the page failed: the table says which
    assert not left, f"the app's Gradio cache and log are removed once the soak ends; left {left}:\n{out}\n" + "".join(
        f.read_text()[-3000:] for f in left if f.is_file()
    )
    samples, latency, summary = markdown_tables(out)
    assert len(samples) >= 10
    for row in samples:  # each row: the median and the highest of the memory readings since the row before
        assert float(row["resident MiB, median since the row before"]) > 100, row
    assert {r["request"] for r in latency} == {"/predict", "/classify", "page, again", "example", "Chromium visit"}
    assert all(int(r["count"]) >= 1 for r in latency), latency
    figures = {r["soak"]: r["value"] for r in summary}
    assert figures["failed"] == "0 (target: none)", out
    oldest = figures["oldest file in the cache once a sweep could have run"]
    assert float(oldest.split(" s ")[0]) <= float(oldest.split("≤ ")[1].split(" s")[0]), oldest
    growth = next(k for k in figures if k.startswith("resident memory, median of minutes"))
    assert "(read every 1 s)" in growth and figures[growth].endswith("(target < 5%)"), figures
    before, after = (float(x) for x in figures[growth].split(" MiB")[0].split(" → "))
    percent = float(figures[growth].split("MiB, ")[1].split("%")[0])
    assert 100 < before and 100 < after and abs(percent - 100 * (after - before) / before) < 0.2, figures[growth]
    # the highest reading after the warm-up is the highest of the rows that cover it (every reading is in a row)
    peak, minute = figures["resident memory, highest reading after the warm-up"].split(" MiB at minute ")
    covering = [r for r in samples if float(r["minute"]) >= 0.4]  # rows whose readings all follow the 10-s warm-up
    assert float(peak) >= max(float(r["resident MiB, highest"]) for r in covering), (peak, covering)
    assert 0.15 <= float(minute) <= float(samples[-1]["minute"]), minute


def test_app_load_answers_or_refuses_every_request_of_a_crowd_and_a_page_among_it(subset, tmp_path, scratch):
    """Two places in the queue and 8 visitors at once: some are told the app is busy, none fails, and a browser page
    opened in the crowd gets its answer or Gradio's busy line; the table has a row per crowd."""
    from cxr.commands.train import main as train_main

    out = tmp_path / "logreg"
    assert (
        train_main(
            [
                "--model",
                "logreg",
                "--image-size",
                "24",
                "--data",
                str(subset),
                "--output-dir",
                str(out),
                "--epochs",
                "1",
            ]
        )
        == 0
    )
    text = run_bench(
        "app_load.py", "--models", str(out / "model"), "--data", str(subset), "--clients", "1", "8",
        "--seconds", "8", "--max-queue", "2", "--browser", env={"TMPDIR": str(scratch)},
    )  # fmt: skip
    left = list(scratch.glob("cxr-*"))  # the log is kept when a request or the page failed: the table says which
    assert not left, f"the app's Gradio cache and log are removed once the run ends; left {left}:\n{text}\n" + "".join(
        f.read_text()[-3000:] for f in left if f.is_file()
    )
    (rows,) = markdown_tables(text)
    assert [r["clients"] for r in rows] == ["1", "8"]
    assert all(r["failed"] == "0" for r in rows), text
    assert int(rows[0]["answered"]) >= 1 and rows[0]["refused (busy)"] == "0"
    assert int(rows[1]["answered"]) >= 1 and int(rows[1]["refused (busy)"]) >= 1, text
    assert "failed requests: 0 (target: none)" in text
    assert "8 clients: the page answered" in text or "8 clients: the page busy" in text, text
