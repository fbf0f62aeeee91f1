"""The projector as a vLLM module; the arithmetic lives in ``kernels.prepare_projector``.

Weights are replicated on every tensor-parallel rank: the projector is small next
to the language model, and keeping it whole lets one fused kernel run it. The
kernel is chosen, and its weights prepacked, once after loading (``prepare``), from
the backend the model resolved at build time (``kernels.dispatch.resolve_backends``).
"""

import torch
from torch import nn

from kernels.projector import ProjectorFn, gelu_form, prepare_projector
from llava_model.hf_projector import projector_type_of


class LlavaProjector(nn.Module):
    def __init__(self, config, in_features: int, backend: str | None = None):
        super().__init__()
        self.kind = projector_type_of(config)
        self.backend = backend  # None: read LLAVA_KERNELS when preparing
        out_features = config.text_config.hidden_size
        bias = bool(getattr(config, "multimodal_projector_bias", True))
        self.act = config.projector_hidden_act or "gelu"
        self._kernel: ProjectorFn | None = None
        if self.kind == "identity":
            if in_features != out_features:
                raise ValueError(
                    f"identity projector needs equal sizes, got vision {in_features} and text {out_features}"
                )
            return
        gelu_form(self.act)  # refuse unknown activations at load time, not per request
        self.linear_1 = nn.Linear(in_features, out_features, bias=bias)
        if self.kind == "mlp2x_gelu":
            self.linear_2 = nn.Linear(out_features, out_features, bias=bias)

    def prepare(self) -> None:
        """Pick the kernel and prepack the weights; call once the weights are loaded."""
        if self.kind == "identity":
            return
        second = getattr(self, "linear_2", None)
        self._kernel = prepare_projector(
            self.linear_1.weight.data,
            None if self.linear_1.bias is None else self.linear_1.bias.data,
            None if second is None else second.weight.data,
            None if second is None or second.bias is None else second.bias.data,
            self.act,
            backend=self.backend,
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.kind == "identity":
            return features
        if self._kernel is None:
            self.prepare()
        shape = features.shape
        out = self._kernel(features.reshape(-1, shape[-1]))  # (B * T, D_vision) -> (B * T, D_text)
        return out.reshape(*shape[:-1], out.shape[-1])
