"""An LSTM classifier that reads an image row by row: the recurrent network of the registry.

The lecture's point about recurrent networks: their weights are as redundant as those
of convolutional ones.  Deep Compression (Han, Mao, Dally, ICLR'16) pruned the LSTM of
NeuralTalk (Karpathy & Fei-Fei) to about 10% of its weights without loss of BLEU score,
and ESE (Han et al., "ESE: Efficient Speech Recognition Engine with Sparse LSTM on
FPGA", FPGA'17) pruned a speech LSTM by ~90% (load-balance-aware), quantized it to 12
bits and ran the sparse matrix-vector products on an FPGA.  This model lets the same
pipeline (``recipes/lstm.yaml``, ``benchmarks/lstm.py``) do that on Fashion-MNIST: an
``N × C × 28 × 28`` image is a sequence of 28 time steps (its rows), each of ``C · 28``
features (the pixels of that row in every channel).

One LSTM layer (Hochreiter & Schmidhuber; PyTorch's gate layout ``i, f, g, o``), input
``x_t``, previous state ``(h_{t-1}, c_{t-1})``, σ the logistic function::

    i_t = σ(W_ii x_t + b_ii + W_hi h_{t-1} + b_hi)        input gate
    f_t = σ(W_if x_t + b_if + W_hf h_{t-1} + b_hf)        forget gate
    g_t = tanh(W_ig x_t + b_ig + W_hg h_{t-1} + b_hg)     cell candidate
    o_t = σ(W_io x_t + b_io + W_ho h_{t-1} + b_ho)        output gate
    c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t
    h_t = o_t ⊙ tanh(c_t)

The four input matrices are stacked into ``weight_ih_l{k}`` (``4h × i``) and the four
recurrent ones into ``weight_hh_l{k}`` (``4h × h``); these are the matrices that are
pruned and weight-shared (each one a separate tensor of the file).  The classifier is a
fully connected layer ``fc`` on the last time step's ``h_T`` of the top layer.

Parameters, with input features ``i = C · input_size``, hidden size ``h``, ``L`` layers
and ``K`` classes::

    first layer:   4h(i + h) + 8h        (two bias vectors of 4h each, as in cuDNN/PyTorch)
    other layers:  4h(h + h) + 8h
    fc:            hK + K

so the default (``i = 28, h = 128, L = 1, K = 10``) has 4·128·156 + 1024 + 1290 = 82,186
parameters (328,744 bytes in fp32).
"""

from __future__ import annotations

import torch
from torch import nn

from efficientdl.errors import ModelError


class LSTMClassifier(nn.Module):
    """Rows of the image as time steps → ``nn.LSTM`` → ``fc`` on the last hidden state.

    The forget-gate biases start at 1 (``b_if = 1``, ``b_hf = 0``; Gers et al. 2000,
    Jozefowicz et al. 2015), so the cell state is kept from the first step of training;
    every other parameter has PyTorch's default initialisation.

    Args:
        num_classes: outputs of ``fc``.
        in_channels: input channels ``C``; a time step holds the row of every channel.
        input_size: width of a row in pixels (28 for the MNIST family).
        hidden_size: ``h``, the size of the hidden and cell states.
        num_layers: stacked LSTM layers ``L``.

    Raises:
        ModelError: an argument that is not a positive integer.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28, hidden_size: int = 128,
                 num_layers: int = 1) -> None:
        super().__init__()
        for label, value in (("num_classes", num_classes), ("in_channels", in_channels), ("input_size", input_size),
                             ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ModelError(f"model lstm: {label} is {value!r} (expected a positive integer)")
        self.edl_arch = {
            "name": "lstm",
            "kwargs": {"num_classes": num_classes, "in_channels": in_channels, "input_size": input_size,
                       "hidden_size": hidden_size, "num_layers": num_layers},
        }
        self.in_channels, self.input_size = in_channels, input_size
        self.lstm = nn.LSTM(in_channels * input_size, hidden_size, num_layers=num_layers, batch_first=True)
        self.fc = nn.Linear(hidden_size, num_classes)
        with torch.no_grad():
            for layer in range(num_layers):
                getattr(self.lstm, f"bias_ih_l{layer}")[hidden_size:2 * hidden_size].fill_(1.0)
                getattr(self.lstm, f"bias_hh_l{layer}")[hidden_size:2 * hidden_size].fill_(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``N × num_classes`` for inputs ``N × C × T × input_size`` (``T`` rows, any number).

        Raises:
            ModelError: an input of another shape.
        """
        if x.dim() != 4 or x.shape[1] != self.in_channels or x.shape[3] != self.input_size:
            raise ModelError(f"model lstm: input of shape {tuple(x.shape)} (expected N x {self.in_channels} x rows x "
                             f"{self.input_size})")
        n, c, rows, width = x.shape
        sequence = x.permute(0, 2, 1, 3).reshape(n, rows, c * width)     # time step t = row t of every channel
        outputs, _ = self.lstm(sequence)
        return self.fc(outputs[:, -1])
