"""Train the digit network on the embedded digits' training split and write its safetensors file (run from
the checkout; minidiff.quality only measures with the weights this writes).

    python -m scripts.train_digit_net                  # -> minidiff/quality/digit_net.safetensors
    python -m scripts.train_digit_net --out net.safetensors --epochs 5

Same seed, same weights on the same CPU: every random draw (initial weights, order, augmentation,
dropout) comes from generators seeded by `--seed`, and the run is single-threaded.

Augmentation, drawn per image: a small random affine map (rotation +-12 degrees, scale 0.9..1.1, shift
+-2 px) and, for half the batches, a round trip through a lower resolution (28 -> s -> 28, s in 12..28),
so the network reads digits that were sampled at 16x16 and enlarged, as `to_input` enlarges them.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from minidiff.quality.digit_net import (
    HELD_OUT_SPLIT,
    INPUT_SIZE,
    TRAIN_SPLIT,
    WEIGHTS_FILE,
    DigitNet,
    accuracy,
    digit_split,
    file_digest,
)


@torch.no_grad()
def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(B, 1, 28, 28) in [0, 1] -> a randomly rotated, scaled, shifted and maybe blurred copy."""
    b = x.shape[0]
    angle = (torch.rand(b, generator=generator) * 2 - 1) * math.radians(12)
    scale = 0.9 + 0.2 * torch.rand(b, generator=generator)
    shift = (torch.rand(b, 2, generator=generator) * 2 - 1) * (2 * 2 / INPUT_SIZE)  # +-2 px in [-1, 1] units
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (B, 28, 28, 2)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if torch.rand(1, generator=generator).item() < 0.5:  # resolution round trip
        size = int(torch.randint(12, INPUT_SIZE + 1, (1,), generator=generator))
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    return x


def train_digit_net(
    seed: int = 0,
    epochs: int = 40,
    batch_size: int = 128,
    lr: float = 2e-3,
    limit: int | None = None,
    progress: bool = False,
) -> DigitNet:
    """A DigitNet trained on the training split (its first `limit` digits, if given)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same reduction order on every run
    try:
        images, labels = digit_split(TRAIN_SPLIT)
        images, labels = images[:limit], labels[:limit]
        x_all = images.float() / 255  # (N, 1, 28, 28)
        torch.manual_seed(seed)  # initial weights and dropout
        net = DigitNet()
        generator = torch.Generator().manual_seed(seed)  # order and augmentation
        steps_per_epoch = math.ceil(len(x_all) / batch_size)
        optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=epochs * steps_per_epoch)
        for epoch in range(epochs):
            net.train()
            order = torch.randperm(len(x_all), generator=generator)
            for rows in order.split(batch_size):
                logits, _ = net(augment(x_all[rows], generator))
                loss = F.cross_entropy(logits, labels[rows])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
            if progress:
                print(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.4f}", flush=True)
        return net.eval().requires_grad_(False)
    finally:
        torch.set_num_threads(threads)


def save_digit_net(net: DigitNet, path: str | Path, metadata: dict[str, str]) -> Path:
    """The weights as safetensors (written atomically), with `metadata` in the header."""
    from safetensors.torch import save_file

    from minidiff.files import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.contiguous() for name, tensor in net.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.train_digit_net", description=__doc__)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--out", default=str(WEIGHTS_FILE), help="safetensors file to write")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    net = train_digit_net(seed=args.seed, epochs=args.epochs, progress=True)
    held_out = {size: accuracy(net, *digit_split(HELD_OUT_SPLIT, size)) for size in (28, 16)}
    metadata = {
        "seed": str(args.seed),
        "epochs": str(args.epochs),
        "held_out_accuracy_28px": f"{held_out[28]:.4f}",
        "held_out_accuracy_16px": f"{held_out[16]:.4f}",
    }
    path = save_digit_net(net, args.out, metadata)
    print(f"trained in {time.perf_counter() - started:.0f} s; held-out accuracy (1,000 digits):")
    print(f"  at 28x28 {held_out[28]:.2%}, at 16x16 (enlarged to 28x28) {held_out[16]:.2%}")
    print(f"  {path} ({path.stat().st_size / 1024:.0f} KiB, sha256 {file_digest(path)}...)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
