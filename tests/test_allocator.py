"""cxr.allocator: every cxr command keeps freed CPU memory for reuse (glibc), unless told not to."""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="the settings are glibc's"
    ),
]

# Imports cxr.commands and runs through run_cli, as every cxr command does: training steps of a small convolutional
# net whose activations (64 MiB each) are above glibc's largest dynamic mmap threshold (32 MiB), in the main
# thread (training) and then in another thread (the app's request handlers); counts the page faults of
# each one's steady state (the fewest of steps 4-6: the heap's layout can still shift once after warm-up), and
# the resident memory kept once the steps' tensors are freed.
_SCRIPT = """
import json, resource, sys, threading
from cxr.commands.common import run_cli
import torch
import cxr.allocator
from cxr.allocator import keep_freed_memory

cxr.allocator.RELEASE_EVERY_S = 3600  # run_cli's periodic release kept out of the page counts

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

def fn():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(32, 32, 3, padding=1))
    x = torch.randn(8, 3, 256, 256)
    base = rss_mib()
    faults = {}

    def steps(where):
        per_step = []
        for step in range(6):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            net(x).square().mean().backward()
            per_step.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        faults[where] = min(per_step[3:])  # the steady state: the fewest of the last three steps

    steps("main")
    thread = threading.Thread(target=steps, args=("thread",))
    thread.start()
    thread.join()
    print(json.dumps({"applied": keep_freed_memory(), "faults": faults, "kept_mib": rss_mib() - base}))

sys.exit(run_cli(fn))
"""


def _env(env_value):
    """This environment with ``CXR_KEEP_FREED_MEMORY`` set to ``env_value`` (``None``: unset)."""
    env = {k: v for k, v in os.environ.items() if k != "CXR_KEEP_FREED_MEMORY"}
    if env_value is not None:
        env["CXR_KEEP_FREED_MEMORY"] = env_value
    return env


def _run(env_value, script=_SCRIPT):
    """Run ``script`` in a fresh process; the JSON it prints last."""
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=_env(env_value), capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cxr_commands_reuse_freed_memory_without_page_faults():
    kept = _run(None)
    assert kept["applied"] is True
    # a step allocates 18 blocks of 64 MiB (16,384 pages each): reused from the heap, a steady-state step
    # faults at most one of them in (where the heap's free space was not yet where it was needed), and
    # the memory stays with the process
    assert kept["faults"]["main"] < 20000, kept
    assert kept["faults"]["thread"] < 20000, kept
    assert kept["kept_mib"] > 128, kept


def test_env_var_keeps_the_c_library_defaults():
    default = _run("0")
    assert default["applied"] is False
    # glibc's default maps each block afresh: every step faults its pages in again; freeing returns them
    assert default["faults"]["main"] > 200000, default
    assert default["faults"]["thread"] > 200000, default
    assert default["kept_mib"] < 64, default


# A program imported as its entry point imports it (every program imports numpy and torch; the app, Gradio too),
# then threads that allocate, as the app's request handlers and torch's do; glibc's report of its arenas.
_ARENAS = """
import ctypes, importlib, sys, threading
importlib.import_module(sys.argv[1])
import numpy as np
import torch
from cxr.allocator import keep_freed_memory

keep_freed_memory()  # where the programs' main applied it before (run_cli): a no-op now

def work():
    blocks = [bytearray(2**16) for _ in range(64)]
    (torch.randn(256, 256) @ torch.randn(256, 256)).sum()
    np.ones(2**20).sum()

threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
ctypes.CDLL("libc.so.6").malloc_stats()  # to standard error: "Arena N:" for each arena
"""


@pytest.mark.parametrize("program", ["cxr.commands.app", "cxr.commands.train", "cxr.commands.predict"])
def test_every_thread_of_a_program_allocates_from_one_arena(program):
    # before the settings came with importing cxr.commands, they were applied after the program's imports had
    # started a thread (numpy's): its arena stayed, and the request handlers shared it, keeping a second pool of
    # freed memory (the app's memory grew for minutes under a steady load)
    out = subprocess.run(
        [sys.executable, "-c", _ARENAS, program], cwd=REPO, env=_env(None), capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    arenas = [line for line in out.stderr.splitlines() if line.startswith("Arena ")]
    assert arenas == ["Arena 0:"], out.stderr[-2000:]


_RELEASE = """
import json, numpy as np
from cxr.allocator import keep_freed_memory, release_freed_memory

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

applied = keep_freed_memory()
base = rss_mib()
block = np.ones(300 * 2**20, dtype=np.uint8)  # 300 MiB from the heap (mmap is off)
del block
kept = rss_mib() - base
released = release_freed_memory()
print(json.dumps({"applied": applied, "kept_mib": kept, "released": released, "after_mib": rss_mib() - base}))
"""


def test_release_freed_memory_hands_a_large_request_back():
    out = subprocess.run([sys.executable, "-c", _RELEASE], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["applied"] is True and got["kept_mib"] > 250, got  # kept for reuse, by design
    assert got["released"] is True and got["after_mib"] < 50, got  # until the decoder hands it back


# A loader's worker forked while the heap holds 300 MiB kept free, then this process writing a new 300 MiB array
# into that free memory: how much the worker's proportional anonymous memory grows, without and with
# release_before_workers before the fork.
_WORKERS = """
import json
import numpy as np, torch
from cxr.allocator import keep_freed_memory, release_before_workers

class Films(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return i

def pss_anon_mib(pid):
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        return sum(int(l.split()[1]) for l in fh if l.startswith("Pss_Anon")) / 1024

def worker_growth(release):
    x = np.ones(300 << 20, np.uint8)
    del x  # freed, kept in the heap for reuse
    loader = torch.utils.data.DataLoader(Films(), batch_size=1, num_workers=1)
    released = release_before_workers(loader) if release else None
    it = iter(loader)
    next(it)
    pid = it._workers[0].pid
    before = pss_anon_mib(pid)
    y = np.ones(300 << 20, np.uint8)  # the next pass's tensors reuse the kept heap
    grown = pss_anon_mib(pid) - before
    del y, it
    return grown, released

assert keep_freed_memory(True)
kept, _ = worker_growth(False)
released_mib, released = worker_growth(True)
no_workers = release_before_workers(torch.utils.data.DataLoader(Films(), num_workers=0))
print(json.dumps({"kept": kept, "released": released_mib, "did_release": released, "no_workers": no_workers}))
"""


def test_a_loader_worker_does_not_keep_the_pages_this_process_reuses_once_released_before_the_fork():
    out = subprocess.run([sys.executable, "-c", _WORKERS], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["kept"] > 100, got  # the worker was left holding the old pages alone
    assert got["did_release"] is True and got["released"] < 20, got
    assert got["no_workers"] is False, got  # nothing forked, nothing released


# A server's heap after requests: blocks freed between blocks that live on; then the periodic release.
_PERIODIC = """
import json, time
import numpy as np
from cxr.allocator import keep_freed_memory, release_periodically

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

applied = keep_freed_memory()
base = rss_mib()
blocks = [np.ones(10 * 2**20, dtype=np.uint8) for _ in range(30)]  # 300 MiB from the heap (mmap is off)
living = blocks[::3]  # every third lives on: the freed ones lie between them, not at the heap's top
del blocks
time.sleep(1.0)
kept = rss_mib() - base
stop = release_periodically(0.2)
time.sleep(1.0)
print(json.dumps({"applied": applied, "started": stop is not None, "kept_mib": kept, "after_mib": rss_mib() - base}))
"""


def test_release_periodically_hands_back_the_free_memory_between_living_blocks():
    res = _run(None, _PERIODIC)
    assert res["applied"] and res["started"], res
    assert res["kept_mib"] > 250, res  # kept: the 200 MiB freed between the 100 MiB that live on
    assert res["after_mib"] < 150, res  # released within a period or two; the living 100 MiB stay


def test_release_periodically_starts_nothing_with_the_c_library_defaults():
    res = _run("0", _PERIODIC)
    assert not res["applied"] and not res["started"], res
    assert res["kept_mib"] < 150, res  # glibc returned the freed blocks itself


# A program's run through run_cli, as every cxr command has it: the periodic release runs while it does, only then;
# and a program run where a release already runs (a benchmark's process) adds no second one and leaves it running.
_PROGRAM = """
import json, threading, time
from cxr.allocator import release_periodically
from cxr.commands.common import run_cli

def releasing():
    return sum(t.name == "cxr-release-freed-memory" for t in threading.enumerate())

during = []
code = run_cli(lambda: during.append(releasing()))
time.sleep(0.5)
after = releasing()
outer = release_periodically()
run_cli(lambda: during.append(releasing()))
time.sleep(0.5)
print(json.dumps({"code": code, "during": during, "after": after, "outer_after": releasing()}))
"""


@pytest.mark.parametrize("env_value, released", [(None, 1), ("0", 0)])
def test_every_program_hands_its_free_memory_back_while_it_runs(env_value, released):
    res = _run(env_value, _PROGRAM)
    assert res["code"] == 0, res
    assert res["during"] == [released, released], res  # one thread, never two
    assert res["after"] == 0, res  # stopped with the program's run
    assert res["outer_after"] == released, res  # the one started outside it runs on
