"""The "pretrained networks" of the post-training benchmark: real-world architectures
trained dense once on Fashion-MNIST (28×28) by the library's trainer and cached.

They stand in for the networks users bring (torchvision/timm style: BatchNorm outside
``nn.Sequential``, depthwise "same"-padding convolutions, ``nn.MultiheadAttention``, a
stacked ``nn.LSTM``).  Sized for a 2-core CPU: ResNet-18 at width 16 is trained on a
20,000-image subset; MobileNetV2 at width 0.5, the ViT and the LSTM on all 60,000 (an
earlier MobileNetV2 trained like ResNet-18, SGD on 20,000 images, stopped underfit at
82% training accuracy — not the converged network a user brings).
"""

from __future__ import annotations

import pathlib
import time

from efficientdl import data, models, train

#: name → (registry name, constructor kwargs, train subset, epochs, optimizer, lr)
NETWORKS = {
    "mobilenetv2": ("mobilenetv2", {"width": 0.5}, None, 4, "adam", 2e-3),
    "resnet18": ("resnet18", {"width": 16}, 20000, 4, "sgd", 0.1),
    "vit": ("vit", {}, None, 5, "adam", 2e-3),
    "lstm": ("lstm", {"num_layers": 3}, None, 4, "adam", 2e-3),
}


def pretrained(name: str, directory: pathlib.Path, log=print):
    """``(model, seconds)``: the cached dense network, or trained now and cached (seed 0)."""
    path = directory / f"pt-{name}.pt"
    if path.exists():
        return train.load_checkpoint(path), 0.0
    registry, kwargs, subset, epochs, optimizer, lr = NETWORKS[name]
    train.set_seed(0)
    ds = data.load("fashion-mnist", fallback=False, train_subset=subset)
    model = models.create(registry, **kwargs)
    start = time.perf_counter()
    train.Trainer(ds.train, ds.test, epochs=epochs, lr=lr, optimizer=optimizer, weight_decay=5e-4 if optimizer == "sgd" else 0.0,
                  seed=0, progress=False).fit(model, description=name)
    seconds = time.perf_counter() - start
    directory.mkdir(parents=True, exist_ok=True)
    train.save_checkpoint(model, path)
    log(f"{name}: trained in {seconds:.0f} s, accuracy {100 * train.evaluate(model, ds.test):.2f}%")
    return model, seconds


if __name__ == "__main__":
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    for network in sys.argv[1:] or list(NETWORKS):
        pretrained(network, root / "runs" / "bench", log=lambda s: print(s, flush=True))
