"""tok.testing.check_quantizer: every registered quantizer passes it, and each
deliberately broken quantizer below fails it, naming the promise."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import tok
from tok import Quantizer, QuantizerOutput, hookimpl
from tok.quantizer import mask_nonfinite, nonfinite_positions
from tok.registry import register_plugin, unregister_plugin
from tok.testing import check_quantizer


@pytest.mark.parametrize("name", tok.list_quantizers())
def test_every_registered_quantizer_conforms(name: str) -> None:
    check_quantizer(name)


class TinyVQ(Quantizer):
    """A small but correct nearest-neighbour VQ with an EMA usage buffer."""

    float32_buffers = ("usage_ema",)

    def __init__(self, *, dim: int = 4, codebook_size: int = 5) -> None:
        super().__init__(dim=dim, codebook_sizes=(codebook_size,))
        self.codebook_size = codebook_size
        self.codebook = nn.Parameter(torch.randn(codebook_size, dim))
        self.register_buffer("usage_ema", torch.zeros(codebook_size))

    @classmethod
    def example_config(cls) -> dict[str, Any]:
        return {"dim": 4, "codebook_size": 5}

    def config(self) -> dict[str, Any]:
        return {"dim": self.dim, "codebook_size": self.codebook_size}

    def lookup(self, z: Tensor) -> Tensor:
        flat = z.detach().reshape(-1, self.dim)
        return (
            torch.cdist(flat.float(), self.codebook.detach().float())
            .argmin(-1)
            .reshape(*z.shape[:-1], 1)
        )

    def update(self, indices: Tensor) -> None:
        if self.training:
            counts = torch.bincount(indices.flatten(), minlength=self.codebook_size)
            self.usage_ema.mul_(0.9).add_(counts.float(), alpha=0.1)

    def straight_through(self, z: Tensor, codes: Tensor) -> Tensor:
        return codes + (z - z.detach())  # exactly ``codes`` in value, gradient of z

    def forward(self, z: Tensor) -> QuantizerOutput:
        self.check_input(z)
        z = z.float()
        bad = nonfinite_positions(z)  # such vectors: index 0, a NaN code, no update
        indices = self.lookup(z.masked_fill(bad.unsqueeze(-1), 0)).masked_fill(bad.unsqueeze(-1), 0)
        self.update(indices[~bad])
        codes = self.codebook[indices[..., 0]].float()
        indices, codes = mask_nonfinite(bad, indices, codes)
        return QuantizerOutput(
            quantized=self.straight_through(z, codes),
            indices=indices,
            aux_loss=(z - codes.detach()).pow(2).mean() * 0.25,
            metrics={"usage": (self.usage_ema > 0).float().mean(), "nonfinite": bad.sum().float()},
        )

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        indices = self.check_indices(indices)
        return self.codebook[indices[..., 0]].float()


def test_tiny_vq_conforms() -> None:
    check_quantizer(TinyVQ)
    check_quantizer(TinyVQ, config={"dim": 3, "codebook_size": 2}, grids=((2,),), batch=1)


class WrapsIndices(TinyVQ):
    def indices_to_codes(self, indices: Tensor) -> Tensor:
        return self.codebook[indices[..., 0] % self.codebook_size]


class CodesDiffer(TinyVQ):
    def indices_to_codes(self, indices: Tensor) -> Tensor:
        return super().indices_to_codes(indices) + 1e-3


class NoGradient(TinyVQ):
    def straight_through(self, z: Tensor, codes: Tensor) -> Tensor:
        return codes


class UpdatesInEval(TinyVQ):
    def update(self, indices: Tensor) -> None:
        self.usage_ema.add_(1.0)


class StateOutsideBuffers(TinyVQ):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scale = torch.rand(())  # learned-looking state the state dict does not hold

    def straight_through(self, z: Tensor, codes: Tensor) -> Tensor:
        return super().straight_through(z, codes) * self.scale

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        return super().indices_to_codes(indices) * self.scale


class ConfigNotJson(TinyVQ):
    def config(self) -> dict[str, Any]:
        return {**super().config(), "dtype": torch.float32}


class ConfigIncomplete(TinyVQ):
    def __init__(self, *, dim: int = 4, codebook_size: int = 5) -> None:
        super().__init__(dim=dim, codebook_size=codebook_size)

    def config(self) -> dict[str, Any]:
        return {"dim": self.dim}

    @classmethod
    def example_config(cls) -> dict[str, Any]:
        return {"dim": 4, "codebook_size": 7}


class Int32Indices(TinyVQ):
    def lookup(self, z: Tensor) -> Tensor:
        return super().lookup(z).int()


class IndicesOutOfRange(TinyVQ):
    def forward(self, z: Tensor) -> QuantizerOutput:
        out = super().forward(z)
        return QuantizerOutput(out.quantized, out.indices + self.codebook_size, out.aux_loss)


class ReturnsTuple(TinyVQ):
    def forward(self, z: Tensor) -> Any:  # type: ignore[override]
        out = super().forward(z)
        return out.quantized, out.indices, out.aux_loss


class WrongShape(TinyVQ):
    def forward(self, z: Tensor) -> QuantizerOutput:
        out = super().forward(z)
        return QuantizerOutput(out.quantized.flatten(1), out.indices, out.aux_loss)


class HalfPrecision(TinyVQ):
    def forward(self, z: Tensor) -> QuantizerOutput:
        out = super().forward(z)
        return QuantizerOutput(out.quantized.half(), out.indices, out.aux_loss)


class AttachedMetrics(TinyVQ):
    def forward(self, z: Tensor) -> QuantizerOutput:
        out = super().forward(z)
        return QuantizerOutput(out.quantized, out.indices, out.aux_loss, {"loss": out.aux_loss})


class VectorAuxLoss(TinyVQ):
    def forward(self, z: Tensor) -> QuantizerOutput:
        out = super().forward(z)
        return QuantizerOutput(out.quantized, out.indices, out.aux_loss.reshape(1))


class RandomInEval(TinyVQ):
    def straight_through(self, z: Tensor, codes: Tensor) -> Tensor:
        return super().straight_through(z, codes) + torch.randn_like(codes) * 1e-3


class NoInputCheck(TinyVQ):
    def forward(self, z: Tensor) -> QuantizerOutput:
        z = z[..., : self.dim]  # silently drops extra channels
        indices = self.lookup(z)
        codes = self.codebook[indices[..., 0]]
        return QuantizerOutput(self.straight_through(z, codes), indices, z.new_zeros(()))


class WrongErrorForBadIndices(TinyVQ):
    def indices_to_codes(self, indices: Tensor) -> Tensor:
        return self.codebook[indices[..., 0]]  # IndexError for K, wraps for -1


class MutatesInput(TinyVQ):
    def forward(self, z: Tensor) -> QuantizerOutput:
        out = super().forward(z)
        with torch.no_grad():
            z.mul_(2)
        return out


class LowPrecisionUnderAutocast(TinyVQ):
    """Looks codes up at low precision under autocast (like a cast to the autocast dtype,
    exaggerated to 8-bit floats so that indices flip for sure)."""

    def lookup(self, z: Tensor) -> Tensor:
        flat = z.detach().reshape(-1, self.dim)
        codebook = self.codebook.detach().float()
        if torch.is_autocast_enabled(flat.device.type):
            flat = flat.to(torch.float8_e4m3fn).float()
            codebook = codebook.to(torch.float8_e4m3fn).float()
        return torch.cdist(flat, codebook).argmin(-1).reshape(*z.shape[:-1], 1)


class Bf16UnderAutocast(TinyVQ):
    """Looks codes up in bf16 under autocast, the usual mistake: on a small input every
    index still matches the float32 one; on thousands of vectors a few flip."""

    def lookup(self, z: Tensor) -> Tensor:
        flat = z.detach().reshape(-1, self.dim)
        codebook = self.codebook.detach().float()
        if torch.is_autocast_enabled(flat.device.type):
            flat, codebook = flat.bfloat16().float(), codebook.bfloat16().float()
        return torch.cdist(flat, codebook).argmin(-1).reshape(*z.shape[:-1], 1)


class WrapsOnlyLargeIndices(TinyVQ):
    """Exact on the small grids; drops to float16 codes once a batch holds many vectors."""

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        codes = super().indices_to_codes(indices)
        return codes.half().float() if indices.numel() > 1000 else codes


class CodesInBf16UnderAutocast(TinyVQ):
    """Quantizes in float32, but lets ``indices_to_codes`` run under the caller's autocast:
    a decoder fed from token files then sees other codes than training did."""

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        indices = self.check_indices(indices)
        return F.embedding(indices[..., 0], self.codebook) @ torch.eye(self.dim)


class NonfiniteIntoState(TinyVQ):
    """Keeps an EMA of the batch mean without leaving non-finite vectors out."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.register_buffer("mean_ema", torch.zeros(self.dim))

    def forward(self, z: Tensor) -> QuantizerOutput:
        if self.training:
            self.mean_ema.mul_(0.9).add_(z.detach().float().reshape(-1, self.dim).mean(0) * 0.1)
        return super().forward(z)


class HidesNonfinite(TinyVQ):
    """Gives a non-finite vector a finite code (the NaN silently disappears)."""

    def forward(self, z: Tensor) -> QuantizerOutput:
        out = super().forward(z)
        return QuantizerOutput(
            out.quantized.nan_to_num(0.0), out.indices, out.aux_loss, out.metrics
        )


class NonfiniteIndices(TinyVQ):
    """Turns a NaN into an index, as ``nan.long()`` does: far outside the codebook."""

    def forward(self, z: Tensor) -> QuantizerOutput:
        out = super().forward(z)
        wild = nonfinite_positions(z.float()).unsqueeze(-1)
        return QuantizerOutput(
            out.quantized, out.indices.masked_fill(wild, -(2**63)), out.aux_loss, out.metrics
        )


class NoNonfiniteMetric(TinyVQ):
    def forward(self, z: Tensor) -> QuantizerOutput:
        out = super().forward(z)
        metrics = {k: v for k, v in out.metrics.items() if k != "nonfinite"}
        return QuantizerOutput(out.quantized, out.indices, out.aux_loss, metrics)


class StatisticsCast(TinyVQ):
    """Does not list its EMA buffer in ``float32_buffers``: ``.to(bfloat16)`` rounds it."""

    float32_buffers = ()


class ProjectionInModuleDtype(TinyVQ):
    """Projects with a plain ``nn.Linear`` after ``z.float()``: breaks once the module is cast."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.project = nn.Linear(self.dim, self.dim)

    def forward(self, z: Tensor) -> QuantizerOutput:
        self.check_input(z)
        with torch.autocast(device_type=z.device.type, enabled=False):  # float32 … until cast
            return super().forward(self.project(z.float()))


BROKEN = [
    (NonfiniteIntoState, "non-finite input never reaches learned state"),
    (HidesNonfinite, "non-finite quantized vector (never hidden)"),
    (NonfiniteIndices, "indices lie in [0, codebook_sizes[s])"),
    (NoNonfiniteMetric, 'metrics["nonfinite"] counts'),
    (StatisticsCast, "learned statistics stay float32"),
    (ProjectionInModuleDtype, "works after module.to(bfloat16)"),
    (WrapsIndices, "never wrap"),
    (WrongErrorForBadIndices, "IndexRangeError"),
    (CodesDiffer, "indices_to_codes(indices) equals quantized exactly"),
    (NoGradient, "gradients reach z"),
    (UpdatesInEval, "eval-mode forward leaves buffers"),
    (StateOutsideBuffers, "same outputs"),
    (ConfigNotJson, "JSON-serialisable"),
    (ConfigIncomplete, "rebuilds the quantizer"),
    (Int32Indices, "int64"),
    (IndicesOutOfRange, "indices lie in [0, codebook_sizes[s])"),
    (ReturnsTuple, "QuantizerOutput"),
    (WrongShape, "quantized has the shape of z"),
    (HalfPrecision, "float32 (or wider)"),
    (AttachedMetrics, "detached"),
    (VectorAuxLoss, "aux_loss is a scalar tensor"),
    (RandomInEval, "deterministic"),
    (NoInputCheck, "wrong last dimension raises a tok.TokError"),
    (MutatesInput, "leaves z unchanged"),
    (LowPrecisionUnderAutocast, "autocast (bf16) gives the same indices as float32"),
    (Bf16UnderAutocast, "autocast (bf16) gives the same indices as float32"),
    (WrapsOnlyLargeIndices, "indices_to_codes(indices) equals quantized exactly"),
    (CodesInBf16UnderAutocast, "indices_to_codes gives the same codes under autocast"),
]


@pytest.mark.parametrize(("cls", "promise"), BROKEN, ids=[c.__name__ for c, _ in BROKEN])
def test_broken_quantizer_fails_naming_the_promise(cls: type, promise: str) -> None:
    with pytest.raises(AssertionError, match="breaks the Quantizer contract") as info:
        check_quantizer(cls)
    assert promise in str(info.value)
    assert cls.__name__ in str(info.value)


def test_not_a_quantizer_subclass() -> None:
    class Plain(nn.Module):
        def __init__(self, *, dim: int = 8) -> None:
            super().__init__()

    with pytest.raises(AssertionError, match="subclass of tok.Quantizer"):
        check_quantizer(Plain)


def test_config_argument_overrides_example_config() -> None:
    with pytest.raises(AssertionError, match="it builds from its config.*unexpected keyword"):
        check_quantizer(TinyVQ, config={"dim": 4, "size": 3})


def test_default_config_is_dim_8() -> None:
    class NeedsCodebookSize(TinyVQ):
        example_config = Quantizer.example_config  # the base-class default: {"dim": 8}

        def __init__(self, *, dim: int, codebook_size: int = 3) -> None:
            assert dim == 8
            super().__init__(dim=dim, codebook_size=codebook_size)

    check_quantizer(NeedsCodebookSize, grids=((2,),))


def test_example_config_may_be_a_dict_attribute() -> None:
    class DictExample(TinyVQ):
        example_config = {"dim": 2, "codebook_size": 3}  # type: ignore[assignment]

    check_quantizer(DictExample, grids=((2,),))


def test_by_registered_name_from_a_third_party_plugin() -> None:
    class Plugin:
        @staticmethod
        @hookimpl
        def register_quantizers(register):
            register(TinyVQ, name="tiny-vq-test")
            register(WrapsIndices, name="wraps-test")

    register_plugin(Plugin(), name="tiny-test-plugin")
    try:
        check_quantizer("tiny-vq-test")
        with pytest.raises(AssertionError, match="'wraps-test'.*never wrap"):
            check_quantizer("wraps-test")
    finally:
        unregister_plugin("tiny-test-plugin")


def test_leaves_the_callers_random_state_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    check_quantizer(TinyVQ, grids=((2,),))
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("cls", [Bf16UnderAutocast, WrapsOnlyLargeIndices])
def test_realistic_size_finds_what_small_inputs_hide(cls: type) -> None:
    check_quantizer(cls, realistic=False)  # the small grids alone pass
    with pytest.raises(AssertionError, match=r"realistic size: batch 8, grid \(32, 32\)"):
        check_quantizer(cls)


def test_realistic_pass_uses_8_x_32_x_32_positions() -> None:
    seen: list[tuple[int, ...]] = []

    class Records(TinyVQ):
        def forward(self, z: Tensor) -> QuantizerOutput:
            seen.append(tuple(z.shape))
            return super().forward(z)

    check_quantizer(Records, grids=((2,),), realistic=False)
    assert (8, 32, 32, 4) not in seen
    check_quantizer(Records, grids=((2,),))
    assert (8, 32, 32, 4) in seen


def test_the_guides_example_config_builds_the_guides_quantizer() -> None:
    """docs/plugins.md's ``example_config`` snippet, applied to its BinaryQuantizer, passes."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "plugins.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    (plugin,) = [
        b for b in blocks if "class BinaryQuantizer(Quantizer):" in b and "def forward" in b
    ]
    (snippet,) = [b for b in blocks if "def example_config" in b and "BinaryQuantizer" in b]
    namespace: dict[str, Any] = {}
    exec(compile(plugin, "docs/plugins.md", "exec"), namespace)
    # the snippet subclasses ``Quantizer``: let that name be the guide's quantizer
    with_example: dict[str, Any] = {"Quantizer": namespace["BinaryQuantizer"]}
    exec(compile(snippet, "docs/plugins.md", "exec"), with_example)
    check_quantizer(with_example["BinaryQuantizer"])


@pytest.mark.parametrize("name", ["fsq", "vq", "rvq", "mgvq", "lfq"])
def test_nonfinite_from_an_overflowing_projection_is_counted(name: str) -> None:
    """A finite input whose projection overflows (3e38) gives a NaN position: it is counted
    in metrics["nonfinite"] like a NaN input, never a silent NaN."""
    cls = tok.get_quantizer(name)
    torch.manual_seed(0)
    q = cls(**cls.example_config()).eval()
    z = torch.randn(2, 3, q.dim)
    z[0, 0, :] = 3e38
    with torch.no_grad():
        out = q(z)
    nan_positions = int((~torch.isfinite(out.quantized)).any(-1).sum())
    assert int(out.metrics["nonfinite"]) == nan_positions
    assert int(out.indices.min()) >= 0
