"""Crash-safe runs: a checkpoint is one unit, published atomically; one writer per run.

Real processes are killed with SIGKILL at random instants, many of them inside a save,
and every run still loads and resumes to the very parameters of an uninterrupted run; a
second Ctrl-C during a save does not break it; a full disk keeps the previous checkpoint;
a second trainer of the same folder is refused; readers of a run in training never see a
half-written checkpoint. See ``omnivae.train.checkpoint`` for the layout.

The killed processes are forked from one "zygote" process that imported torch and omnivae
once, so that a kill cycle costs milliseconds rather than the two seconds of an import:
each child is an ordinary process running ``omnivae.cli.main(argv)``, killed by the kernel.
"""

from __future__ import annotations

import errno
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import write_tiny_npz
from omnivae.cli import main
from omnivae.errors import RunDirError, UserError
from omnivae.fileio import atomic_write
from omnivae.train import load_run
from omnivae.train.checkpoint import (
    CHECKPOINTS,
    FILES,
    LOCK,
    POINTER,
    SAVE_DELAY_ENV,
    Checkpoint,
    lock_holder,
    published_checkpoint,
    read_published,
)

TINY = ["--model", "wb", "--backbone", "mlp", "--hidden", "8", "--latent-dim", "2", "--batch-size", "16",
        "--no-progress", "--device", "cpu"]
EPOCHS = 8

ZYGOTE = r"""
import json, os, sys, traceback
from omnivae.cli import main  # torch and omnivae are imported once, here; every child is forked

for line in sys.stdin:
    command = json.loads(line)
    if "warm_up" in command:
        # Import here every module a training imports (found by a child that trains once), so
        # that children import nothing more; the zygote itself never computes, which is what
        # makes forking it safe (no thread pool or lock of a computation is ever held).
        pid = os.fork()
        if pid == 0:
            sys.stdout = sys.stderr = open(os.devnull, "w")
            code = main(command["warm_up"])
            with open(command["modules"], "w") as f:
                json.dump(sorted(sys.modules), f)
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        import importlib
        for name in json.load(open(command["modules"])):
            try:
                importlib.import_module(name)
            except Exception:
                pass
        print(os.waitstatus_to_exitcode(status), flush=True)
    elif "argv" in command:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.environ.update(command["env"])
                fd = os.open(command["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                sys.stdout = open(1, "w", buffering=1, closefd=False)
                sys.stderr = open(2, "w", buffering=1, closefd=False)
                code = main(command["argv"])
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        print(pid, flush=True)
    else:
        _, status = os.waitpid(command["wait"], 0)
        print(os.waitstatus_to_exitcode(status), flush=True)
"""


class Zygote:
    """Forks ``omnivae`` processes from one that has imported everything already."""

    def __init__(self, cwd: Path) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        env.pop(SAVE_DELAY_ENV, None)
        self.process = subprocess.Popen([sys.executable, "-c", ZYGOTE], cwd=cwd, env=env, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.logs: dict[int, Path] = {}

    def _ask(self, command: dict, timeout: float = 120.0) -> int:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        if not select.select([self.process.stdout], [], [], timeout)[0]:
            for pid, log in self.logs.items():  # a child that hangs: end it, show what it printed
                os.kill(pid, signal.SIGKILL)
                raise AssertionError(f"process {pid} did not end within {timeout} s:\n{log.read_text()}")
            raise AssertionError(f"the zygote did not answer {command} within {timeout} s")
        return int(self.process.stdout.readline())

    def start(self, argv: list[str], log: Path, save_delay: float = 0.0) -> int:
        env = {SAVE_DELAY_ENV: str(save_delay)} if save_delay else {SAVE_DELAY_ENV: "0"}
        pid = self._ask({"argv": argv, "log": str(log), "env": env})
        self.logs[pid] = log
        return pid

    def wait(self, pid: int) -> tuple[int, str]:
        """The exit status (minus the signal number when killed) and what the child printed."""
        code = self._ask({"wait": pid})
        return code, self.logs.pop(pid).read_text()

    def run(self, argv: list[str], log: Path, save_delay: float = 0.0) -> tuple[int, str]:
        return self.wait(self.start(argv, log, save_delay))

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)


def _mount_tmpfs(where: Path, size: str) -> bool:
    return os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True
    ).returncode == 0


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """Where the killed runs go: a RAM file system where one can be mounted (root), since
    a save's eight fsyncs cost about 0.1 s on this machine's disk and the kill test makes
    hundreds of saves; the ordinary temporary folder otherwise."""
    where = tmp_path_factory.mktemp("scratch")
    mounted = _mount_tmpfs(where, "256m")
    yield where
    if mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture(scope="module")
def zygote(tmp_path_factory, npz):
    where = tmp_path_factory.mktemp("zygote")
    z = Zygote(where)
    assert z._ask({"warm_up": new_argv(npz, where / "warm-up", 1), "modules": str(where / "modules.json")}) == 0
    yield z
    z.close()


@pytest.fixture(scope="module")
def npz(tmp_path_factory) -> Path:
    return write_tiny_npz(tmp_path_factory.mktemp("data") / "tiny.npz", n=64)


def new_argv(npz: Path, run: Path, epochs: int = EPOCHS, *extra: str) -> list[str]:
    return ["train", "--dataset", f"npz:{npz}", *TINY, "--epochs", str(epochs), "--out", str(run), *extra]


def progress(run: Path) -> dict:
    return read_published(run, Checkpoint.progress)


def model_tensors(run: Path) -> dict[str, torch.Tensor]:
    return read_published(run, lambda c: c.tensors("model.safetensors"))


def one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if not line.startswith("training ")]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def leftovers(run: Path) -> list[str]:
    """What a stopped save left: generation folders other than the published one, temporary files."""
    checkpoint = published_checkpoint(run)
    published = None if checkpoint is None else checkpoint.folder.name
    folders = sorted(p.name for p in (run / CHECKPOINTS).glob("gen-*") if p.name != published)
    return folders + sorted(p.name for p in run.glob(".*.tmp"))


@pytest.fixture(scope="module")
def reference(zygote, npz, scratch) -> tuple[Path, float]:
    """An uninterrupted run, and how long its process took."""
    run = scratch / "reference" / "run"
    run.parent.mkdir()
    started = time.monotonic()
    code, log = zygote.run(new_argv(npz, run), run.parent / "log")
    assert code == 0, log
    return run, time.monotonic() - started


# -- SIGKILL at random instants ----------------------------------------------------------


def test_sigkill_at_random_instants_never_loses_a_run(zygote, npz, reference, scratch):
    """At least 50 SIGKILLs at random instants (half of the runs with slowed saves, so that
    many kills land inside one; more, up to 200, until 5 have); after each, the run loads at its last published checkpoint
    (never an earlier one), and ``--resume`` ends on the uninterrupted run's parameters."""
    reference_run, seconds = reference
    expected = model_tensors(reference_run)
    rng = random.Random(16)
    kills = in_save = before_first = lost = runs = 0
    started = time.monotonic()
    tmp_path = scratch / "kills"
    tmp_path.mkdir()
    # On a loaded machine fewer kills land inside a save; keep killing (up to 200) until
    # at least 5 have, so the check below tests the writer, not the machine's load.
    while kills < 50 or (in_save < 5 and kills < 200):
        run = tmp_path / f"run{runs}"
        # Every other run sleeps between the files of a save (five sleeps: 50 ms per save, about
        # half of its time) and is killed once training is under way, so that many kills land
        # inside a save; the others are killed anywhere, start-up included.
        delay = 0.01 if runs % 2 else 0.0
        argv = new_argv(npz, run)
        step = -1
        for attempt in range(5):
            pid = zygote.start(argv, tmp_path / "log", save_delay=delay)
            if delay:
                deadline = time.monotonic() + 30
                while not (run / CHECKPOINTS).exists() and time.monotonic() < deadline:
                    time.sleep(0.001)
                time.sleep(rng.uniform(0.0, 0.5))
            else:
                time.sleep(rng.uniform(0.0, seconds * 0.8))
            os.kill(pid, signal.SIGKILL)
            code, log = zygote.wait(pid)
            if code == 0:  # it finished before the kill
                argv = ["train", "--resume", str(run), "--no-progress"]
                break
            assert code == -signal.SIGKILL, log
            kills += 1
            in_save += bool(leftovers(run))
            if published_checkpoint(run) is None:  # killed before its first checkpoint
                before_first += 1
                argv = new_argv(npz, run, EPOCHS, "--overwrite")
                continue
            try:
                load_run(run)
                now = progress(run)["global_step"]
            except RunDirError:
                lost += 1
                raise
            assert now >= step, "a published checkpoint went back in time"
            step = now
            argv = ["train", "--resume", str(run), "--no-progress"]
        code, log = zygote.run(argv, tmp_path / "log")
        assert code == 0, log
        assert progress(run)["finished"] and not leftovers(run)
        final = model_tensors(run)
        assert final.keys() == expected.keys()
        for key in final:
            assert torch.equal(final[key], expected[key]), f"run {runs}: {key} differs from the uninterrupted run"
        history = read_published(run, Checkpoint.history)
        assert [r["epoch"] for r in history] == list(range(1, EPOCHS + 1))
        runs += 1
    elapsed = time.monotonic() - started
    print(f"{kills} SIGKILLs over {runs} runs, {in_save} inside a save, {before_first} before the first "
          f"checkpoint, {lost} runs lost, {elapsed:.1f} s")
    assert lost == 0
    assert in_save >= 5, f"only {in_save} kills landed inside a save"


def test_a_run_in_the_old_flat_layout_loads_and_resumes(npz, reference, tmp_path, capsys):
    """Runs written before checkpoint generations (the four files beside config.json)."""
    source, _ = reference
    old = tmp_path / "old"
    old.mkdir()
    config = json.loads((source / "config.json").read_text())
    del config["dataset"]["fingerprint"]  # the old writer had none: resumed with no check
    config["train"]["epochs"] = EPOCHS - 2
    (old / "config.json").write_text(json.dumps(config, indent=2))
    short = tmp_path / "short"
    assert main(new_argv(npz, short, EPOCHS - 2)) == 0
    for name in FILES:  # what the old save() wrote, byte for byte the same content
        (old / name).write_bytes(published_checkpoint(short).path(name).read_bytes())
    assert published_checkpoint(old).generation is None
    assert load_run(old).train_config.epochs == EPOCHS - 2
    assert progress(old)["global_step"] == progress(short)["global_step"]
    capsys.readouterr()
    assert main(["train", "--resume", str(old), "--epochs", str(EPOCHS), "--no-progress"]) == 0
    assert published_checkpoint(old).generation is not None
    assert not any((old / name).exists() for name in FILES), "the flat files are gone once a generation is published"
    final, expected = model_tensors(old), model_tensors(source)
    assert all(torch.equal(final[k], expected[k]) for k in expected)


# -- signals during a save ---------------------------------------------------------------


def _inside_a_save(run: Path, pid: int, timeout: float = 30.0) -> None:
    """Wait until a checkpoint has been published and the next one is being written."""
    deadline = time.monotonic() + timeout
    while not (published_checkpoint(run) is not None and leftovers(run)):
        assert time.monotonic() < deadline, "no save was seen"
        time.sleep(0.002)


def test_a_second_ctrl_c_inside_a_save_waits_for_it(zygote, npz, reference, tmp_path):
    run = tmp_path / "run"
    pid = zygote.start(new_argv(npz, run), tmp_path / "log", save_delay=0.1)  # each save takes 0.5 s
    _inside_a_save(run, pid)
    writing = leftovers(run)[0]
    os.kill(pid, signal.SIGINT)
    time.sleep(0.05)
    os.kill(pid, signal.SIGINT)  # the second Ctrl-C, which used to abandon the save half-way
    code, log = zygote.wait(pid)
    assert code == 130, log
    assert f"resume with: omnivae train --resume {run}" in log and "Traceback" not in log
    assert published_checkpoint(run).folder.name == writing, "training stopped once the save was published"
    assert not leftovers(run)
    state = progress(run)
    assert not state["finished"] and state["step_in_epoch"] == 0
    load_run(run)
    code, log = zygote.run(["train", "--resume", str(run), "--no-progress"], tmp_path / "log")
    assert code == 0, log
    final, expected = model_tensors(run), model_tensors(reference[0])
    assert all(torch.equal(final[k], expected[k]) for k in expected)


# -- a full disk -------------------------------------------------------------------------


@pytest.mark.parametrize("fails", [*FILES, POINTER])
def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint(npz, tmp_path, monkeypatch, capsys, fails):
    """ENOSPC while writing any file of the second checkpoint (or its publication): one
    line, exit status 2, the first checkpoint published and intact, no temporary file left."""
    import omnivae.train.checkpoint as checkpoint

    run = tmp_path / "run"
    saves = {"n": 0}
    real_durable, real_atomic = checkpoint.write_durable, checkpoint.atomic_write_bytes

    def full(path: Path) -> bool:
        return saves["n"] >= 2 and Path(path).name == fails

    def durable(path, data):
        if Path(path).name == FILES[0]:
            saves["n"] += 1
        if full(path):
            real_durable(path, data[:3])  # a partial write, then the error
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_durable(path, data)

    def atomic(path, data):
        if full(path):  # inside the temporary file, before its rename
            def partial(tmp):
                tmp.write_bytes(data[:3])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            atomic_write(path, partial)
        real_atomic(path, data)

    monkeypatch.setattr(checkpoint, "write_durable", durable)
    monkeypatch.setattr(checkpoint, "atomic_write_bytes", atomic)
    assert main(new_argv(npz, run, 3)) == 2
    line = one_line(capsys.readouterr().err)
    assert "No space left on device" in line and "previous checkpoint (global step 4) is intact" in line
    assert f"omnivae train --resume {run}" in line
    assert progress(run)["global_step"] == 4 and not leftovers(run)
    assert sorted(p.name for p in run.iterdir()) == sorted([LOCK, POINTER, CHECKPOINTS, "config.json"])
    load_run(run)
    monkeypatch.setattr(checkpoint, "write_durable", real_durable)
    monkeypatch.setattr(checkpoint, "atomic_write_bytes", real_atomic)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert progress(run)["finished"]


@pytest.fixture()
def tmpfs(tmp_path):
    """A small RAM file system (needs root); skipped where it cannot be mounted."""
    where = tmp_path / "tmpfs"
    where.mkdir()
    if not _mount_tmpfs(where, "900k"):
        pytest.skip("cannot mount a tmpfs here")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_really_full_disk(npz, tmpfs, capsys):
    """On a file system with room for about one checkpoint: a real ENOSPC at the second."""
    run = tmpfs / "run"
    assert main(new_argv(npz, run, 3)) == 2
    line = one_line(capsys.readouterr().err)
    assert "No space left on device" in line and "is intact" in line
    assert not leftovers(run)
    load_run(run)
    subprocess.run(["mount", "-o", "remount,size=8m", str(tmpfs)], check=True)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0, capsys.readouterr().err
    assert progress(run)["finished"]


def test_a_read_only_run_is_read_and_not_written(reference, tmp_path, capsys):
    """Readers take no lock and write nothing; evaluate cannot write there: one line."""
    source, _ = reference
    copy = tmp_path / "copy"
    shutil.copytree(source, copy)
    view = tmp_path / "ro"
    view.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "--bind", str(copy), str(view)], capture_output=True).returncode:
        pytest.skip("cannot bind-mount here")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(view)], check=True)
        load_run(view)
        assert main(["sample", str(view), "--out", str(tmp_path / "s.png"), "--device", "cpu", "--n", "2"]) == 0
        capsys.readouterr()
        assert main(["evaluate", str(view), "--metrics", "recon", "--no-figures", "--device", "cpu"]) == 2
        line = one_line(capsys.readouterr().err)
        assert str(view) in line
    finally:
        subprocess.run(["umount", "-l", str(view)], check=False)


# -- one writer, many readers ------------------------------------------------------------


def test_a_second_trainer_of_the_same_run_is_refused(zygote, npz, tmp_path, capsys):
    run = tmp_path / "run"
    first = zygote.start(new_argv(npz, run), tmp_path / "first", save_delay=0.05)
    second = zygote.start(new_argv(npz, run), tmp_path / "second", save_delay=0.05)  # at the same time
    results = sorted([zygote.wait(first), zygote.wait(second)])
    assert [code for code, _ in results] == [0, 2], results
    assert "is being trained by another process (pid" in one_line(results[1][1])
    assert progress(run)["finished"]

    pid = zygote.start(["train", "--resume", str(run), "--epochs", str(2 * EPOCHS), "--no-progress"],
                       tmp_path / "third", save_delay=0.05)
    deadline = time.monotonic() + 30
    while lock_holder(run) != pid:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    for argv in (["train", "--resume", str(run)], new_argv(npz, run), new_argv(npz, run, EPOCHS, "--overwrite")):
        assert main(argv) == 2
        assert f"is being trained by another process (pid {pid})" in one_line(capsys.readouterr().err)
    code, log = zygote.wait(pid)
    assert code == 0, log
    assert progress(run)["global_step"] > 0 and progress(run)["epoch"] == 2 * EPOCHS


def test_readers_during_training_see_only_published_checkpoints(zygote, npz, tmp_path):
    run = tmp_path / "run"
    pid = zygote.start(new_argv(npz, run, 30), tmp_path / "log")
    reads, steps = 0, []
    while not (run / POINTER).exists():
        time.sleep(0.002)

    def running() -> bool:  # the zygote reaps its children: an ended one is a zombie until then
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    while running():
        loaded = load_run(run)  # must never fail: no half-written checkpoint, no false damage
        assert not loaded.model.training
        steps.append(progress(run)["global_step"])
        reads += 1
    code, log = zygote.wait(pid)
    assert code == 0, log
    assert steps == sorted(steps) and reads >= 10, (reads, steps[:5])
    print(f"{reads} reads during training, none failed")


# -- --resume and --out on runs that stopped before their first checkpoint ------------------


def test_a_run_killed_before_its_first_checkpoint(npz, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(new_argv(npz, run, 1)) == 0
    shutil.rmtree(run / CHECKPOINTS)
    (run / POINTER).unlink()  # as if killed during the first epoch: config.json only
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 2
    line = one_line(capsys.readouterr().err)
    assert "stopped before its first checkpoint" in line and "--overwrite" in line
    assert main(new_argv(npz, run, 1)) == 2
    line = one_line(capsys.readouterr().err)
    assert "stopped before its first checkpoint" in line and "--overwrite" in line
    (run / "notes.txt").write_text("mine")
    assert main(new_argv(npz, run, 1, "--overwrite")) == 0
    assert (run / "notes.txt").read_text() == "mine", "--overwrite removes only what omnivae wrote"
    assert progress(run)["finished"]


def test_overwrite_refuses_a_folder_that_is_not_a_run(npz, tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    assert main(new_argv(npz, folder, 1, "--overwrite")) == 2
    assert "not an omnivae run" in one_line(capsys.readouterr().err)
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.tex"]


# -- the data a run resumes on -----------------------------------------------------------


def test_resume_refuses_changed_data_unless_told(tmp_path, capsys):
    data = write_tiny_npz(tmp_path / "data.npz", n=64)
    run = tmp_path / "run"
    assert main(new_argv(data, run, 1)) == 0
    before = sorted(p.name for p in run.rglob("*"))
    write_tiny_npz(data, n=64, seed=1)  # other values, same shapes
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "differ from the data" in line and "--allow-data-change" in line
    assert sorted(p.name for p in run.rglob("*")) == before
    assert main(["train", "--resume", str(run), "--epochs", "2", "--allow-data-change", "--no-progress"]) == 0
    # A run written before fingerprints resumes without a check.
    config = json.loads((run / "config.json").read_text())
    del config["dataset"]["fingerprint"]
    (run / "config.json").write_text(json.dumps(config))
    write_tiny_npz(data, n=64, seed=2)
    assert main(["train", "--resume", str(run), "--epochs", "3", "--no-progress"]) == 0


def test_every_json_the_run_writes_is_strict(tmp_path):
    from omnivae.fileio import json_bytes

    assert json.loads(json_bytes({"a": float("nan"), "b": [float("inf"), 1.5]})) == {"a": None, "b": [None, 1.5]}
    with pytest.raises(UserError, match="--seed"):
        from omnivae.train import TrainConfig

        TrainConfig(seed=2**64).validate()
