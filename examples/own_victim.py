"""A user's own victim, as ``evaluate.py --victim examples/own_victim.py:FUNCTION`` takes it.

Any function that returns an ``nn.Module`` taking images in [0, 1] will do; these two wrap the
shipped ResNet-20 so that the spec kinds can be checked against the checkpoint path (issue 44):

    python evaluate.py --defense none --victim examples/own_victim.py:shipped_resnet20 --num-samples 200
    python evaluate.py --defense none --victim examples/own_victim.py:plain_resnet20 \\
        --victim-weights resnet20_plain.pt --victim-normalize cifar10 --num-samples 200

The second is the network without its normalisation layer, with its weights from a state-dict
file: how a model trained outside this project usually arrives.
"""

import torch
from torch import nn

from dipdefense.common.checkpoint_io import resolve_repo_path
from dipdefense.nets import load_classifier
from dipdefense.nets.cifar_resnet import resnet_cifar

SHIPPED = "checkpoints/victim_cifar_resnet20.ckpt"


def shipped_resnet20() -> nn.Module:
    """The shipped checkpoint, normalisation inside, loaded by our own code."""
    return load_classifier(resolve_repo_path(SHIPPED))


def plain_resnet20() -> nn.Module:
    """The bare ResNet-20 architecture (no normalisation, random weights): evaluate.py loads the
    weights from --victim-weights and puts --victim-normalize in front."""
    return resnet_cifar(20, num_classes=10)


def write_plain_weights(path: str = "resnet20_plain.pt") -> None:
    """The shipped ResNet-20's network weights without its normalisation layer, as a state dict."""
    torch.save(shipped_resnet20()[1].state_dict(), path)


if __name__ == "__main__":
    write_plain_weights()
