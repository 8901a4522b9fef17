"""Continuous latents (a VAE's): their evaluation in nats and posterior-collapse test.

:func:`evaluate_latents` is what :func:`tok.run.evaluate` runs for a tokenizer whose
bottleneck is continuous (:class:`tok.bottleneck.ContinuousBottleneck`): the
reconstruction term, the KL and the negative ELBO per image, in nats, PSNR, and the KL
of each latent dimension with the count of active ones.

Axis legend: ``b`` batch, ``...`` grid positions, ``l`` latent dimensions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .components import build
from .data import Samples
from .losses import Loss, LossInputs
from .metrics import psnr, sample_std

if TYPE_CHECKING:
    from .image_metrics import ImageQuality
    from .models import Tokenizer
    from .recipe import Recipe

__all__ = ["ACTIVE_THRESHOLD", "evaluate_latents", "likelihood_of"]

#: a latent dimension whose KL over the evaluation set is below this many nats is
#: inactive (collapsed to the prior): the lecture's threshold (``train.active_threshold``)
ACTIVE_THRESHOLD = 0.01


@torch.no_grad()
def evaluate_latents(
    tokenizer: Tokenizer,
    samples: Samples,
    *,
    batch_size: int = 500,
    device: torch.device | str,
    keep: int = 0,
    likelihood: Loss | None = None,
    active_threshold: float = ACTIVE_THRESHOLD,
    quality: ImageQuality | None = None,
) -> dict[str, Any]:
    """Reconstruct ``samples`` through a continuous tokenizer's latent means and measure
    them (eval mode, fp32): the VAE's figures, per item, in nats.

    Returns ``psnr`` and ``mse`` (as :func:`evaluate`); ``kl`` (KL of the posterior to the
    prior, nats per item); ``kl_dims`` (each latent dimension's KL, nats, averaged over
    items and grid positions); ``active_dims`` (how many of those are ≥
    ``active_threshold``, the lecture's posterior-collapse test with 0.01 nats; Burda et
    al. 2016 apply 0.01 to the variance of the posterior mean instead, see
    docs/posterior-collapse.md) with ``inactive`` (their indices below it) and
    ``active_threshold``; ``stochastic`` (the bottleneck's: ``False`` for a
    deterministic one, whose KL is 0 and none of whose dimensions ``tok inspect``
    judges); with a ``likelihood`` (the run's ``train.loss``),
    ``recon_nll`` (that loss per item — nats for ``bernoulli_nll``/``gaussian_nll`` — of
    the reconstruction decoded from one sample z ~ q(z|x) per image, drawn from a
    generator seeded with 0, so the figure is the usual one-sample estimate of
    E_q[−log p(x|z)] and repeats exactly) and ``neg_elbo`` = ``recon_nll + kl``;
    ``images``, ``psnr_std``, ``kept`` and the ``quality`` metrics as :func:`evaluate`. PSNR, ``mse`` and the kept pictures
    decode the posterior means (what ``tok encode`` stores), clamped to ``[0, 1]``.
    """
    was_training = tokenizer.training
    tokenizer.eval()
    scores, mses, kl_items, kept = [], [], [], ([], [])
    kl_dims = torch.zeros(tokenizer.bottleneck.latent_dim, dtype=torch.float64)
    nll = 0.0
    generator = torch.Generator(device=device).manual_seed(0)  # the same draws every time
    for start in range(0, len(samples), batch_size):
        x = samples.floats(slice(start, start + batch_size)).to(device)
        out = tokenizer(x)
        recon = out.reconstruction.clamp(0, 1)
        scores.append(psnr(recon, x).cpu())
        mses.append((recon - x).pow(2).flatten(1).mean(1).cpu())
        kl = out.kl.double().cpu()
        kl_items.append(kl.flatten(1).sum(1))
        kl_dims += kl.reshape(len(x), -1, kl.shape[-1]).mean(1).sum(0)
        if likelihood is not None:  # E_q[-log p(x|z)], one sample of z per image
            drawn = tokenizer.sample_forward(x, generator=generator)
            inputs = LossInputs(x, drawn.reconstruction, tokenizer, 0, drawn.logits)
            nll += float(likelihood(inputs).loss) * len(x)
        if quality is not None:
            quality.update(x, recon)
        kept[0].append(x[: max(0, keep - start)].cpu())
        kept[1].append(recon[: max(0, keep - start)].cpu())
    tokenizer.train(was_training)
    kl_dims /= len(samples)
    kl_item = torch.cat(kl_items).mean().item()
    result: dict[str, Any] = {
        "psnr": torch.cat(scores).mean().item(),
        "psnr_std": sample_std(torch.cat(scores)),
        "mse": torch.cat(mses).mean().item(),
        "kl": kl_item,
        "kl_dims": [round(float(v), 6) for v in kl_dims],
        "active_dims": int((kl_dims >= active_threshold).sum()),
        "inactive": [j for j, v in enumerate(kl_dims.tolist()) if v < active_threshold],
        "active_threshold": active_threshold,
        "latent_dim": tokenizer.bottleneck.latent_dim,
        "stochastic": tokenizer.bottleneck.stochastic,
        "images": len(samples),
    }
    if likelihood is not None:
        result["recon_nll"] = nll / len(samples)
        result["neg_elbo"] = result["recon_nll"] + kl_item
    if quality is not None:
        result.update(quality.result())
    if keep:
        result["kept"] = (torch.cat(kept[0]), torch.cat(kept[1]))
    return result


def likelihood_of(recipe: Recipe) -> Loss:
    """The run's reconstruction term (``train.loss``, built from the loss registry) that
    :func:`evaluate_latents` reports; nats per item for the likelihood losses."""
    return build("losses", recipe.train.loss, {})
