"""LoRA adapters: wrap a causal LM for training, save and load the adapter of a live model,
and load a trained adapter back onto its base model."""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedcot.errors import ConfigError, ModelNotFoundError
from fedcot.models.registry import prepare

if TYPE_CHECKING:
    from peft import PeftModel

    from fedcot.train.config import LoraSettings

__all__ = ["apply_lora", "linear_module_names", "load_adapter", "load_trained", "save_adapter"]

ADAPTER_WEIGHTS = "adapter_model.safetensors"
"""The file of a PEFT adapter folder that holds the LoRA tensors."""


@contextmanager
def _quiet_peft() -> Iterator[None]:
    # peft reads a deprecated transformers property when wrapping a model; the warning
    # says nothing a user can act on.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        yield


def linear_module_names(model: Any) -> list[str]:
    """Short names of the model's linear layers (what ``lora_targets`` can name)."""
    import torch

    names = {
        name.rsplit(".", 1)[-1]
        for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.Linear) and name
    }
    return sorted(names)


def apply_lora(model: Any, cfg: LoraSettings) -> PeftModel:
    """Wrap ``model`` with a fresh LoRA adapter (only the adapter is trainable).

    ``cfg`` is any config holding the LoRA settings (FedCoT's ``TrainConfig``, FedMKT's
    ``MKTTrainConfig``).

    A model that already is a PeftModel (an adapter from an earlier round) is returned as
    it is, with its adapter weights trainable.
    """
    from peft import LoraConfig, PeftModel, get_peft_model

    if isinstance(model, PeftModel):
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.requires_grad_(True)
        return model
    targets = cfg.lora_targets
    lora = LoraConfig(
        task_type="CAUSAL_LM",
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets if isinstance(targets, str) else list(targets),
    )
    try:
        with _quiet_peft():
            return get_peft_model(model, lora)
    except ValueError as e:
        raise ConfigError(
            f"cannot apply LoRA to the modules {targets!r}: {e}".split("\n")[0],
            hint="set train.lora_targets to 'all-linear' or to some of "
            f"{', '.join(linear_module_names(model))}",
        ) from e


def save_adapter(model: Any, folder: str | os.PathLike[str]) -> None:
    """Save ``model``'s adapter to ``folder`` as a plain PEFT folder (it reloads with
    ``PeftModel.from_pretrained``), atomically: written beside it, then renamed."""
    folder = Path(folder)
    # A name of its own per process: two processes may save the same folder at once (a
    # stopped Flower run's last task and its resumed run); both write identical tensors.
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(str(tmp))
    for attempt in range(3):
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.replace(tmp, folder)
            return
        except OSError:
            if attempt == 2:
                raise


def load_adapter(model: Any, folder: str | os.PathLike[str]) -> None:
    """Load the adapter :func:`save_adapter` wrote into ``model`` (a PeftModel with the same
    LoRA layout), in place."""
    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights

    folder = Path(folder)
    if not (folder / ADAPTER_WEIGHTS).is_file():  # not on disk: never ask the Hub
        raise FileNotFoundError(f"no adapter in {folder} ({ADAPTER_WEIGHTS} is missing)")
    set_peft_model_state_dict(model, load_peft_weights(str(folder), device="cpu"))


def _base_folder(base: str | os.PathLike[str]) -> Path:
    return Path(prepare(base))


def load_trained(
    base: str | os.PathLike[str] | None,
    adapter_dir: str | os.PathLike[str],
    *,
    dtype: Any = None,
    merge: bool = False,
) -> tuple[Any, Any]:
    """(model, tokenizer) of a trained client model, in eval mode on CPU.

    ``adapter_dir`` is the ``adapter`` folder :func:`train_multitask` wrote. A LoRA adapter
    is loaded on top of ``base`` (an embedded model name, a GGUF file or a transformers
    folder); with ``merge`` the adapter is merged into the weights and a plain model
    returned. A folder holding a full model (``method = "full"``) is loaded directly and
    ``base`` is not needed. The tokenizer comes from ``adapter_dir`` when it was saved there.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(adapter_dir)
    dtype = dtype or torch.float32
    is_adapter = (folder / "adapter_config.json").is_file()
    is_full = (folder / "config.json").is_file()
    if not (is_adapter or is_full):
        raise ModelNotFoundError(
            f"{folder} holds neither a LoRA adapter nor a model",
            hint="point to the 'adapter' folder that training wrote",
        )
    if is_adapter:
        from peft import PeftModel

        if base is None:
            raise ConfigError(
                f"{folder} holds a LoRA adapter; its base model is needed",
                hint="pass the base model the adapter was trained on",
            )
        base_dir = _base_folder(base)
        model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=dtype)
        with _quiet_peft():
            model = PeftModel.from_pretrained(model, str(folder))
        if merge:
            model = model.merge_and_unload()
    else:
        base_dir = folder
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    has_tokenizer = any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    tokenizer = AutoTokenizer.from_pretrained(str(folder if has_tokenizer else base_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer
