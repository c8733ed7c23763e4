"""``train.compile``: off is the step exactly as before it existed, bit for bit; on, the compiled
step trains like the eager one to the tolerance the README states; the CUDA path (mode, step
marks) is selected by device type, checked here with a stand-in for ``torch.compile`` and for real
under the ``gpu`` marker; impossible settings stop with an error naming the key."""

from __future__ import annotations

import resource
from dataclasses import dataclass

import pytest
import torch
from conftest import tiny_section

from petseg import compiled, config
from petseg.config import ModelsParams, TrainParams
from petseg.device import autocast
from petseg.engine import train_one_epoch
from petseg.errors import ParamsError
from petseg.losses import make_loss
from petseg.models import build_model
from petseg.optim import make_optimizer, make_scheduler, param_groups, weight_average

CPU = torch.device("cpu")
MODELS = ModelsParams.model_validate(tiny_section("models"))  # depth 2, width 8
STEPS = 4
LR = 0.01  # TINY's rate: Adam's steps are large, so rounding differences show
# The compiled step's tolerance against the eager one, per precision (README, "Speed and memory
# on a CPU"): the loss of the first step (same weights) and of the later ones, relative; the
# weights' distance between the two runs, relative to how far training moved them. bf16 rounds
# to 8 significant bits wherever eager and fused kernels store an intermediate differently.
TOLERANCE = {False: (1e-5, 1e-4, 0.02), True: (1e-4, 1e-3, 0.1)}  # bf16: (first, losses, weights)


@pytest.fixture(autouse=True)
def one_thread():
    """As TINY trains (train.threads 1): tests share the cores with each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _batches(device: torch.device = CPU) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    out = []
    for _ in range(STEPS):
        x = torch.randn(8, 3, 32, 32, generator=gen).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 3, (8, 32, 32), generator=gen)
        out.append((x.to(device), y.to(device)))
    return out


@dataclass
class Run:
    start: dict[str, torch.Tensor]  # the weights before the first step
    model: torch.nn.Module
    ema: torch.nn.Module
    optimizer: torch.optim.Optimizer
    losses: list[float]


def _pre_change_step(model, batch, optimizer, scheduler, loss_fn, bf16, device, ema) -> float:
    """One step of engine.train_one_epoch as it was before train.compile (44bffa3), verbatim."""
    x, y = batch
    with autocast(device, bf16):
        logits = model(x)
    loss = loss_fn(logits, y)
    value = loss.item()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    ema.update_parameters(model)
    return value


def _train(how: str, bf16: bool, arch: str = "unet", device: torch.device = CPU) -> Run:
    """STEPS steps of the recipe's parts: ``how`` is "pre-change" (the old step and optimizer),
    "default" (train_one_epoch without ``forward``), "off" or "on" (train.compile)."""
    torch.manual_seed(0)
    model = build_model(arch, MODELS, 3).to(device, memory_format=torch.channels_last)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    p = TrainParams(lr=LR, bf16=bf16, compile=how == "on")
    if how == "pre-change":
        optimizer = torch.optim.AdamW(param_groups(model, p.weight_decay), lr=p.lr)
    else:
        optimizer = make_optimizer(model, p)
    scheduler = make_scheduler(optimizer, p, 100)
    ema = weight_average(model, 1.0, 2)
    loss_fn = make_loss(None, 0.0, 1.0, device)
    forward = None
    if how in ("off", "on"):
        forward = compiled.forward_loss(model, loss_fn, device, bf16, p.compile)
    losses = []
    for batch in _batches(device):
        if how == "pre-change":
            losses.append(
                _pre_change_step(model, batch, optimizer, scheduler, loss_fn, bf16, device, ema)
            )
            continue
        losses.append(
            train_one_epoch(
                model,
                iter([batch]),
                1,
                optimizer,
                scheduler,
                loss_fn,
                1,
                bf16,
                device,
                progress=False,
                after_step=lambda: ema.update_parameters(model),
                forward=forward,
            )  # fmt: skip
        )
    return Run(start, model, ema, optimizer, losses)


def _tensors(run: Run) -> dict[str, torch.Tensor]:
    """Weights, buffers, weight average and AdamW's moments, by name."""
    out = {f"model.{k}": v for k, v in run.model.state_dict().items()}
    out |= {f"ema.{k}": v for k, v in run.ema.state_dict().items()}
    for i, state in run.optimizer.state_dict()["state"].items():
        out |= {f"adamw.{i}.{k}": v for k, v in state.items()}
    return out


@pytest.mark.parametrize("bf16", [False, True], ids=["float32", "bf16"])
@pytest.mark.parametrize("how", ["off", "default"])
def test_compile_off_is_the_pre_change_step_bit_for_bit(how, bf16):
    before, now = _train("pre-change", bf16), _train(how, bf16)
    assert now.losses == before.losses
    old, new = _tensors(before), _tensors(now)
    assert old.keys() == new.keys() and len(old) > 40
    differ = [k for k in old if not torch.equal(old[k], new[k])]
    assert not differ, f"not bit-identical: {differ[:5]}"
    assert type(now.optimizer) is type(before.optimizer)
    assert now.optimizer.defaults["fused"] is None


def _assert_trains_alike(eager: Run, fast: Run, bf16: bool) -> None:
    first_rtol, loss_rtol, weights_rtol = TOLERANCE[bf16]
    assert fast.losses[0] == pytest.approx(eager.losses[0], rel=first_rtol)
    assert fast.losses == pytest.approx(eager.losses, rel=loss_rtol)
    a, b = eager.model.state_dict(), fast.model.state_dict()
    weights = [k for k, v in a.items() if v.is_floating_point()]
    moved = torch.cat([(a[k] - eager.start[k]).flatten() for k in weights]).norm()
    apart = torch.cat([(a[k] - b[k]).flatten() for k in weights]).norm()
    assert moved > 0 and apart <= weights_rtol * moved, f"{apart:.3g} apart, {moved:.3g} moved"
    assert not torch.equal(a[weights[0]], eager.start[weights[0]])


@pytest.mark.slow  # inductor compiles C++ kernels: a minute or so with a cold cache
@pytest.mark.parametrize("bf16", [False, True], ids=["float32", "bf16"])
def test_compiled_step_trains_like_the_eager_step(bf16):
    eager, fast = _train("off", bf16), _train("on", bf16)
    assert fast.optimizer.defaults["fused"] is True
    _assert_trains_alike(eager, fast, bf16)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compiled_step_trains_like_the_eager_step_on_cuda():
    cuda = torch.device("cuda")
    eager, fast = _train("off", True, device=cuda), _train("on", True, device=cuda)
    _assert_trains_alike(eager, fast, bf16=True)


# --------------------------------------------------- the device-type choices, with a stand-in
class FakeCompile:
    """Stands in for torch.compile: records the call and returns the function uncompiled."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, fn, **kwargs):
        self.calls.append(kwargs)
        return fn


@pytest.fixture
def fake_compile(monkeypatch) -> tuple[FakeCompile, list[int]]:
    fake, marks = FakeCompile(), []
    monkeypatch.setattr(torch, "compile", fake)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    return fake, marks


@pytest.mark.parametrize(
    ("device", "mode", "marks_per_step"),
    [("cpu", None, 0), ("cuda", "reduce-overhead", 1)],
)
def test_the_device_type_picks_mode_and_step_marks(fake_compile, monkeypatch, device, mode,
                                                   marks_per_step):  # fmt: skip
    fake, marks = fake_compile
    monkeypatch.setattr(compiled, "precision", lambda device, bf16: "float32")  # no CUDA here
    torch.manual_seed(0)
    model = build_model("unet", MODELS, 3)
    loss_fn = make_loss(None, 0.0, 1.0, CPU)
    forward = compiled.forward_loss(model, loss_fn, torch.device(device), True, compile=True)
    assert fake.calls == [{"mode": mode, "dynamic": False}]
    batches = _batches()
    losses = [forward(x, y).item() for x, y in batches]
    assert len(marks) == marks_per_step * len(batches)
    eager = compiled.forward_loss(model, loss_fn, CPU, False, compile=False)
    assert losses == [eager(x, y).item() for x, y in batches]


def test_compile_off_compiles_nothing(fake_compile):
    fake, _ = fake_compile
    compiled.forward_loss(build_model("unet", MODELS, 3), make_loss(None, 0.0, 1.0, CPU), CPU,
                          True, compile=False)  # fmt: skip
    assert fake.calls == []


# ----------------------------------------------------------------------------------- errors
def test_a_bad_value_names_the_key():
    with pytest.raises(ParamsError, match=r"train\.compile = 'yes' is invalid"):
        config.validate({"train": {"compile": "yes"}})
    assert config.validate({"train": {"compile": True}}).train.compile is True
    assert TrainParams().compile is False


def test_impossible_settings_name_the_key_and_the_fix(monkeypatch):
    from torch._inductor import cpp_builder, exc
    from torch.utils import _triton

    fix = r"set train\.compile: false"
    with pytest.raises(ParamsError, match=rf"train\.compile = true is not supported on MPS.*{fix}"):
        compiled.check_compile(True, torch.device("mps"))
    monkeypatch.setattr(_triton, "has_triton", lambda: False)
    with pytest.raises(ParamsError, match=rf"train\.compile = true needs Triton on CUDA.*{fix}"):
        compiled.check_compile(True, torch.device("cuda"))

    def no_compiler() -> str:
        raise exc.InvalidCxxCompiler()

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", no_compiler)
    with pytest.raises(ParamsError, match=rf"needs a C\+\+ compiler.*g\+\+.*{fix}"):
        compiled.check_compile(True, CPU)
    for device in ("cpu", "cuda", "mps"):
        compiled.check_compile(False, torch.device(device))  # off: nothing is needed


# ----------------------------------------------------------------------------------- memory
def _faults_touching(nbytes: int) -> int:
    """Minor page faults of allocating, writing and freeing ``nbytes``."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.ones(nbytes // 4)
    del t
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_freed_memory_is_kept_inside_and_returned_after():
    nbytes = 64 * 1024 * 1024  # above glibc's largest mmap threshold: mapped afresh by default
    pages = nbytes // resource.getpagesize()
    with compiled.keep_freed_memory(CPU) as kept:
        if not kept:
            pytest.skip("not glibc: keep_freed_memory does nothing here")
        _faults_touching(nbytes)
        again = _faults_touching(nbytes)
    after = [_faults_touching(nbytes) for _ in range(3)]
    assert again < 0.1 * pages  # reused from the heap: no new pages
    # The default again: the kept memory may serve one more allocation, and is then handed back
    # when freed, so every later one is a fresh mapping.
    assert min(after[1:]) > 0.5 * pages
    with compiled.keep_freed_memory(CPU, enabled=False) as kept:
        assert not kept and _faults_touching(nbytes) > 0.5 * pages
