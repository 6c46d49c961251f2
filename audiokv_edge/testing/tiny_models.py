"""Tiny random-weight GGUF pairs (text model + audio projector) of real llama.cpp / libmtmd architectures.

They exist for tests and for the built-in default of ``python -m audiokv_edge.run``: the vendored llama.cpp loads
them through the same code paths as the real models (same GGUF keys, tensor names, shapes and types), but every
weight is random, so the generated text is meaningless. A pair is written in well under a second.

Layouts follow ``src/models/<arch>.cpp`` (text side) and ``tools/mtmd/clip.cpp`` + ``models/whisper-enc.cpp``
(audio side) of the vendored llama.cpp. The vocabulary is a real byte-level BPE ("gpt2" tokenizer model) trained on
a few English sentences, with each family's chat special tokens, so prompts, chat templates and mtmd's audio
markers tokenize the way they do with the real models.

:data:`REAL_SHAPES` are the same layouts at the exact sizes of published audio LLMs (layers, heads, KV heads,
head_dim, FFN, vocabulary, the Whisper-large audio tower and its projector), with Q4_0 text weights (written as
random Q4_0 blocks, no float weights made first) and F16 audio weights, as the published GGUFs: memory and speed
do not depend on the weights' values. :func:`real_shape_pair` writes one on demand into a cache directory
(gigabytes; never committed).
"""

from __future__ import annotations

import logging
import pathlib
import re
import zlib
from collections import Counter
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

#: Whisper-family encoders see 3000 mel frames per chunk; the conv stack halves that to 1500 positions.
WHISPER_POSITIONS = 1500

#: Text the tiny BPE vocabulary is trained on (merges only; byte tokens cover every other string).
_BPE_CORPUS = (
    "Transcribe the audio. What is said in this recording? Answer the question about the audio. "
    "And so, my fellow Americans, ask not what your country can do for you, ask what you can do for your country. "
    "And you always want to see it in the superlative degree. "
    "He turned sharply, and faced Gregson across the table. "
    "The New York Times. Men walk on moon. Astronauts land on plain, collect rocks, plant flag. "
    "the of and to in is that it was for on are with as his they be at one have this from "
)

_GPT2_PRE = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+")

TOKEN_NORMAL = 1
TOKEN_CONTROL = 3
TOKEN_UNUSED = 5

#: Weight types of the text model's matrices; Q4_0 blocks hold 32 weights (an F16 scale and 16 bytes of nibbles).
WEIGHT_TYPES = ("f32", "q4_0")
Q4_0_BLOCK = 32
Q4_0_BLOCK_BYTES = 18
#: Types of the audio encoder's and projector's matrices.
AUDIO_WEIGHT_TYPES = {"f32": np.float32, "f16": np.float16}


@dataclass(frozen=True)
class ChatFamily:
    """Special tokens, tokenizer settings and Jinja chat template of one model family.

    Parameters
    ----------
    name : str
        Family name (``"chatml"``, ``"llama3"``, ``"gemma"``).
    specials : tuple of str
        Control tokens appended after the BPE tokens, in this order.
    bos, eos, eot : str or None
        Which special plays each role (``None``: none).
    add_bos : bool
        Whether llama.cpp prepends BOS when tokenizing.
    pre : str
        ``tokenizer.ggml.pre`` (llama.cpp pre-tokenizer name).
    template : str
        ``tokenizer.chat_template`` (Jinja).
    """

    name: str
    specials: tuple[str, ...]
    bos: str | None
    eos: str
    eot: str | None
    add_bos: bool
    pre: str
    template: str


CHATML = ChatFamily(
    name="chatml",
    specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_bos|>", "<|audio_eos|>", "<|AUDIO|>",
              "<|audio_start|>", "<|audio_end|>"),
    bos=None,
    eos="<|im_end|>",
    eot="<|im_end|>",
    add_bos=False,
    pre="qwen2",
    template=(
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
)

LLAMA3 = ChatFamily(
    name="llama3",
    specials=("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    bos="<|begin_of_text|>",
    eos="<|eot_id|>",
    eot="<|eot_id|>",
    add_bos=True,
    pre="llama-bpe",
    template=(
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
        " + '<|eot_id|>' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
    ),
)

GEMMA = ChatFamily(
    name="gemma",
    specials=("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"),
    bos="<bos>",
    eos="<eos>",
    eot="<end_of_turn>",
    add_bos=True,
    pre="default",
    template=(
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
        "{% endif %}"
        "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
    ),
)

#: Mistral (Voxtral's text model): [INST] turns and libmtmd's voxtral audio marker.
MISTRAL = ChatFamily(
    name="mistral",
    specials=("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[BEGIN_AUDIO]"),
    bos="<s>",
    eos="</s>",
    eot=None,
    add_bos=True,
    pre="default",
    template=(
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{% if message['role'] == 'user' %}{{ '[INST]' + message['content'] + '[/INST]' }}"
        "{% else %}{{ message['content'] + eos_token }}{% endif %}"
        "{% endfor %}"
    ),
)

#: Gemma 4: turn markers ``<|turn>`` / ``<turn|>`` and the audio markers libmtmd puts around gemma4a embeddings.
GEMMA4 = ChatFamily(
    name="gemma4",
    specials=("<pad>", "<eos>", "<bos>", "<|turn>", "<turn|>", "<|audio>", "<audio|>"),
    bos="<bos>",
    eos="<eos>",
    eot="<turn|>",
    add_bos=True,
    pre="default",
    template=(
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
        "{% endif %}"
        "{{ '<|turn>' + role + '\\n' + message['content'] | trim + '<turn|>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|turn>model\\n' }}{% endif %}"
    ),
)

#: LFM2 (LFM2-Audio's text model): ChatML turns after a ``<|startoftext|>`` BOS.
LFM2 = ChatFamily(
    name="lfm2",
    specials=("<|pad|>", "<|startoftext|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"),
    bos="<|startoftext|>",
    eos="<|im_end|>",
    eot="<|im_end|>",
    add_bos=True,
    pre="lfm2",
    template=(
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
)

#: Granite (Granite Speech's text model): role markers and ``<|end_of_text|>``.
GRANITE = ChatFamily(
    name="granite",
    specials=("<|end_of_text|>", "<|start_of_role|>", "<|end_of_role|>", "<|pad|>"),
    bos="<|end_of_text|>",
    eos="<|end_of_text|>",
    eot=None,
    add_bos=False,
    pre="refact",
    template=(
        "{% for message in messages %}"
        "{{ '<|start_of_role|>' + message['role'] + '<|end_of_role|>' + message['content'] + '<|end_of_text|>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_of_role|>assistant<|end_of_role|>' }}{% endif %}"
    ),
)


#: Text architectures :func:`write_text_model` writes.
TEXT_ARCHS = ("qwen2", "qwen3", "qwen3moe", "llama", "gemma2", "gemma3", "gemma4", "gemma3n", "lfm2", "granite",
              "granitehybrid")

#: gemma3n constants of the vendored llama.cpp (``src/models/gemma3n.cpp``, ``llama-hparams.h``), not read from the
#: GGUF: the first 20 layers own K/V (the others share them), SWA period 5, AltUp with 4 inputs, LAuReL rank 64,
#: 256-wide per-layer embeddings.
GEMMA3N_KV_LAYERS = 20
GEMMA3N_SWA_PERIOD = 5
GEMMA3N_ALTUP = 4
GEMMA3N_LAUREL_RANK = 64
GEMMA3N_PER_LAYER = 256


@dataclass(frozen=True)
class TextModelSpec:
    """Shape of a tiny text model.

    Parameters
    ----------
    arch : str
        llama.cpp architecture, one of :data:`TEXT_ARCHS` (gemma2: attention logit soft-capping 50, tied output).
    family : ChatFamily
        Tokenizer and chat template.
    n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff : int
        Sizes; ``n_head % n_head_kv == 0``.
    n_ctx_train : int
        ``<arch>.context_length`` (tokens); long enough for 300 s of audio.
    rope_freq_base : float
        RoPE base.
    sliding_window : int
        gemma3 / gemma4: window of the SWA layers (tokens). gemma3: every second layer is SWA.
    swa_period : int
        gemma4: the last layer of every ``swa_period`` layers is full attention, the others SWA (E2B / E4B: 5).
    n_kv_shared : int
        gemma4: the last ``n_kv_shared`` layers have no K/V of their own and read the cache of the last full /
        SWA layer before them (``attention.shared_kv_layers``; E2B: 20 of 35).
    head_dim_swa : int
        gemma4: head size of the SWA layers (``head_dim`` is the full-attention layers'; E2B: 256 / 512).
    n_embd_per_layer : int
        gemma4: width of the per-layer token embeddings (E2B: 256).
    double_wide_mlp : bool
        gemma4: the layers sharing another layer's KV have an FFN twice ``n_ff`` wide (``use_double_wide_mlp``;
        written as a per-layer ``feed_forward_length`` array, as llama.cpp's converter does; E2B: yes).
    n_expert, n_expert_used : int
        qwen3moe: experts per layer and experts each token uses (Qwen3-Omni-30B-A3B: 128 / 8); each expert's FFN
        width is ``n_ff``.
    attn_layers : tuple of int
        lfm2 / granitehybrid: the attention layers (``head_count_kv`` > 0); the others are gated short-convolution
        layers (LFM2-1.2B: 6 of 16) / Mamba2 layers (Granite 4.0 H).
    ssm_state, ssm_heads, ssm_groups, ssm_conv : int
        granitehybrid: the Mamba2 layers' state size, heads, groups and convolution kernel (the inner width is
        2 x ``n_embd``, the only expansion llama.cpp loads).
    shortconv_l_cache : int
        lfm2: kernel length of the short convolutions (``shortconv.l_cache``; LFM2: 3).
    n_vocab : int
        Vocabulary size; 0: the tiny BPE vocabulary alone, larger: padded with unused tokens to this size.
    weights : str
        Type of the weight matrices: ``"f32"`` or ``"q4_0"`` (norms and biases stay F32).
    tied_output : bool
        No ``output.weight``: the output head is the token embedding (llama.cpp's fallback).
    """

    arch: str
    family: ChatFamily
    n_embd: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_head_kv: int = 2
    head_dim: int = 16
    n_ff: int = 128
    n_ctx_train: int = 32768
    rope_freq_base: float = 10000.0
    sliding_window: int = 0
    n_vocab: int = 0
    weights: str = "f32"
    tied_output: bool = False
    swa_period: int = 0
    n_kv_shared: int = 0
    head_dim_swa: int = 0
    n_embd_per_layer: int = 0
    double_wide_mlp: bool = False
    n_expert: int = 0
    n_expert_used: int = 0
    attn_layers: tuple[int, ...] = ()
    shortconv_l_cache: int = 3
    ssm_state: int = 16
    ssm_heads: int = 4
    ssm_groups: int = 1
    ssm_conv: int = 4

    def __post_init__(self) -> None:
        if self.arch not in TEXT_ARCHS:
            raise ValueError(f"unsupported tiny text architecture {self.arch!r}")
        for name in ("n_embd", "n_layer", "n_head", "n_head_kv", "head_dim", "n_ff", "n_ctx_train"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_head % self.n_head_kv:
            raise ValueError(f"n_head ({self.n_head}) must be a multiple of n_head_kv ({self.n_head_kv})")
        if self.arch in ("qwen2", "lfm2") and self.n_head * self.head_dim != self.n_embd:
            raise ValueError(f"{self.arch} needs n_head * head_dim == n_embd")
        if self.weights not in WEIGHT_TYPES:
            raise ValueError(f"weights must be one of {', '.join(WEIGHT_TYPES)}, got {self.weights!r}")
        if self.weights == "q4_0" and any(n % Q4_0_BLOCK for n in (self.n_embd, self.n_ff,
                                                                   self.n_head * self.head_dim)):
            raise ValueError(f"q4_0 weights need n_embd, n_ff and n_head * head_dim divisible by {Q4_0_BLOCK}")
        if self.arch == "qwen3moe" and not 1 <= self.n_expert_used <= self.n_expert:
            raise ValueError("qwen3moe needs 1 <= n_expert_used <= n_expert")
        if self.arch in ("lfm2", "granitehybrid") and (not self.attn_layers
                                                       or not set(self.attn_layers) <= set(range(self.n_layer))):
            raise ValueError(f"{self.arch} needs attn_layers: a non-empty set of layer indices")
        if self.arch == "granitehybrid" and (2 * self.n_embd) % self.ssm_heads:
            raise ValueError("granitehybrid needs ssm_heads dividing the inner width 2 x n_embd")
        if self.arch == "gemma3n" and self.n_layer - self.n_kv_shared != GEMMA3N_KV_LAYERS:
            raise ValueError(f"gemma3n needs n_layer - n_kv_shared == {GEMMA3N_KV_LAYERS} (llama.cpp fixes the "
                             "layers owning K/V)")
        if self.arch in ("gemma2", "gemma3", "gemma4", "gemma3n") and self.sliding_window < 1:
            raise ValueError(f"{self.arch} needs sliding_window >= 1")
        if self.arch == "gemma4":
            if self.swa_period < 2 or self.head_dim_swa < 1 or self.n_embd_per_layer < 1:
                raise ValueError("gemma4 needs swa_period >= 2, head_dim_swa >= 1 and n_embd_per_layer >= 1")
            n_kv = self.n_layer - self.n_kv_shared
            if self.n_kv_shared and (n_kv < 2 or self.is_swa(n_kv - 1) or not self.is_swa(n_kv - 2)):
                # llama.cpp's rule: a shared layer reads layer n_kv - 1 (full) or n_kv - 2 (SWA)
                raise ValueError("gemma4 shared KV layers need a full-attention layer last and an SWA layer "
                                 "second-to-last among the layers with their own KV")

    def is_swa(self, il: int) -> bool:
        """Whether layer ``il`` is a sliding-window layer (gemma2 / gemma3: even layers; gemma4: all but the last of each
        ``swa_period``; other archs: none)."""
        if self.arch in ("gemma2", "gemma3"):
            return il % 2 == 0
        if self.arch == "gemma4":
            return il % self.swa_period < self.swa_period - 1
        if self.arch == "gemma3n":
            return il % GEMMA3N_SWA_PERIOD < GEMMA3N_SWA_PERIOD - 1
        return False

    def has_kv(self, il: int) -> bool:
        """Whether layer ``il`` stores its own K/V (gemma4: not the last ``n_kv_shared`` layers; lfm2: its attention
        layers only)."""
        if self.arch in ("lfm2", "granitehybrid"):
            return il in self.attn_layers
        return il < self.n_layer - self.n_kv_shared

    def layer_head_dim(self, il: int) -> int:
        """Head size of layer ``il`` (gemma4's SWA layers have their own)."""
        return self.head_dim_swa if self.arch == "gemma4" and self.is_swa(il) else self.head_dim

    def layer_n_ff(self, il: int) -> int:
        """FFN width of layer ``il`` (gemma4 with ``double_wide_mlp``: twice ``n_ff`` in the layers sharing KV)."""
        return 2 * self.n_ff if self.double_wide_mlp and not self.has_kv(il) else self.n_ff


#: ``clip.projector_type`` values :func:`write_audio_projector` writes.
AUDIO_PROJECTORS = ("qwen2a", "qwen2.5o", "qwen3a", "ultravox", "voxtral", "glma", "meralion", "musicflamingo",
                    "lfm2a", "granite_speech", "mimo_audio",
                    "gemma4a", "parakeet", "gemma4ua", "dots3note_a")
#: Samples per gemma4ua token (clip.cpp fixes its n_mel_bins at 640: 40 ms at 16 kHz).
GEMMA4UA_FRAME = 640
#: Projectors that stack encoder frames (``clip.audio.projector.stack_factor`` required).
STACKING_PROJECTORS = ("ultravox", "voxtral", "glma", "meralion")
#: Projectors whose encoder is Whisper's (``models/whisper-enc.cpp``).
WHISPER_PROJECTORS = ("qwen2a", "qwen2.5o", "ultravox", "voxtral", "glma", "meralion", "musicflamingo")


@dataclass(frozen=True)
class AudioProjectorSpec:
    """Shape of a tiny Whisper-family audio encoder + projector (libmtmd ``clip`` GGUF).

    Parameters
    ----------
    projector : str
        ``clip.projector_type``: ``"qwen2a"`` (Qwen2-Audio), ``"qwen2.5o"`` (Qwen2.5-Omni's legacy name, loaded as
        qwen2a), ``"qwen3a"`` (Qwen3-Omni / Qwen3-ASR: conv2d stem on 100-frame chunks, 13 tokens per second),
        ``"ultravox"``, ``"voxtral"``, ``"glma"`` (GLM-ASR: stacked frames between learned begin / end embeddings),
        ``"meralion"`` (MERaLiON: stacked frames, GLU adaptor), ``"musicflamingo"`` (Music Flamingo: Whisper with
        average pool), ``"gemma4a"`` (Gemma 4's conformer: two stride-2 conv2d, chunked local attention),
        ``"lfm2a"`` (LFM2-Audio's FastConformer, ``models/conformer.cpp``: three stride-2 conv2d, relative-position
        attention over the whole clip, an MLP adapter) or ``"granite_speech"`` (Granite Speech: conformer with
        block-local Shaw attention and a CTC branch, then a windowed Q-Former, ``models/granite-speech.cpp``) or
        ``"mimo_audio"`` (MiMo-Audio's tokenizer + connector, ``models/mimo-audio.cpp``: 24 kHz mel, a causal
        transformer with full / windowed layers, residual vector quantization, the code embeddings summed, a local
        transformer over groups of frames, an MLP on each flattened group) or ``"parakeet"`` (NVIDIA's Parakeet
        FastConformer, ``models/parakeet.cpp``: its own mel (pre-emphasis, stored filterbank and window, per-bin
        normalization), three stride-2 conv2d, relative-position attention, batch-norm conv module, an RMS-norm +
        squared-ReLU MLP) or ``"gemma4ua"`` (the audio of Gemma 4 Unified, ``models/gemma4ua.cpp``: encoder-free,
        the raw 16 kHz waveform in 640-sample frames, an RMS norm and one matrix to the text width; ``n_layer`` 0 as
        the converter writes it) or ``"dots3note_a"`` (dots3-note's audio, ``models/dots3note.cpp``: 60 s mel chunks,
        three stride-2 conv2d + GELU, a transformer with RMS norms, half-rotary RoPE and a SiLU-gated FFN, a
        layer-norm + GELU MLP adapter).
    n_embd, n_layer, n_head, n_ff : int
        Encoder sizes.
    n_mel : int
        Mel bins of the input (Whisper large: 128).
    stack_factor : int
        Frames stacked by the ultravox / voxtral projector (0 for qwen2a).
    n_hidden : int
        Hidden width of the ultravox / voxtral / qwen3a projector MLP.
    n_conv : int
        qwen3a / gemma4a / lfm2a / parakeet / dots3note_a: channels of the conv2d stem.
    context_size, conv_kernel, max_pos_emb, proj_window, proj_downsample, proj_n_head, n_ctc : int
        granite_speech (published values as defaults): frames per attention block, depthwise kernel (also
        parakeet's: published 9), relative
        position range, Q-Former window (frames) and its downsampling (queries = window / downsample), Q-Former heads,
        CTC vocabulary.
    rvq_bins, local_layers, local_group, attn_window : int
        mimo_audio: codebook entries per quantizer, the local
        transformer's layers, frames per group (MiMo-V2.5: 4) and the windowed layers' look-back (frames).
    rvq_quantizers : int
        mimo_audio: residual quantizers (MiMo-Audio: 8).
    weights : str
        Type of the encoder and projector matrices: ``"f32"`` or ``"f16"`` (conv kernels are always F16).
    """

    projector: str
    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_ff: int = 128
    n_mel: int = 128
    stack_factor: int = 0
    n_hidden: int = 64
    n_conv: int = 8
    context_size: int = 200
    conv_kernel: int = 15
    max_pos_emb: int = 512
    proj_window: int = 15
    proj_downsample: int = 5
    proj_n_head: int = 4
    n_ctc: int = 32
    rvq_bins: int = 16
    rvq_quantizers: int = 2
    local_layers: int = 1
    local_group: int = 4
    attn_window: int = 50
    weights: str = "f32"

    def __post_init__(self) -> None:
        if self.projector not in AUDIO_PROJECTORS:
            raise ValueError(f"unsupported tiny audio projector {self.projector!r}")
        if self.projector in STACKING_PROJECTORS and self.stack_factor < 1:
            raise ValueError(f"{self.projector} needs stack_factor >= 1")
        if self.projector == "gemma4ua" and (self.n_layer or self.n_mel != GEMMA4UA_FRAME):
            raise ValueError(f"gemma4ua is encoder-free: n_layer 0 and n_mel {GEMMA4UA_FRAME} (samples per frame)")
        if self.n_embd % self.n_head:
            raise ValueError("audio n_embd must be a multiple of n_head")
        if self.projector == "mimo_audio" and self.n_layer < 3:
            raise ValueError("mimo_audio needs n_layer >= 3 (models/mimo-audio.cpp adds layer 3's output back)")
        if self.projector == "qwen3a" and self.n_mel % 8:
            raise ValueError("qwen3a needs n_mel divisible by 8 (three stride-2 convolutions)")
        if self.weights not in AUDIO_WEIGHT_TYPES:
            raise ValueError(f"audio weights must be f32 or f16, got {self.weights!r}")


#: A Gemma 3n-shaped tiny text model (E2B: 30 layers, the last 10 sharing KV): the 20 layers llama.cpp gives their
#: own K/V, then 5 sharing it (4 SWA layers reading layer 18, one full-attention layer reading layer 19).
GEMMA3N_LIKE = TextModelSpec("gemma3n", GEMMA, n_embd=64, n_layer=25, n_head=4, n_head_kv=2, head_dim=32,
                             sliding_window=16, n_kv_shared=5)

#: A Granite 4.0 H-shaped tiny text model (granitehybrid): Mamba2 layers with attention layers among them (the
#: published models have about one attention layer in ten; here 2 of 6, at 2 and 5), Granite's multipliers.
GRANITE4_HYBRID_LIKE = TextModelSpec("granitehybrid", GRANITE, n_embd=64, n_layer=6, n_head=4, n_head_kv=2,
                                     head_dim=32, rope_freq_base=10000000.0, attn_layers=(2, 5))

#: A Gemma 4 E2B-shaped tiny text model: SWA layers with a full-attention layer closing each period, the last layers
#: sharing the KV of the last full / SWA layer with their own (E2B: 35 layers, period 5, 20 shared), a larger head
#: size for the full-attention layers, per-layer embeddings.
GEMMA4_E2B_LIKE = TextModelSpec("gemma4", GEMMA4, n_embd=64, n_layer=8, n_head=4, n_head_kv=2, head_dim=64,
                                head_dim_swa=32, sliding_window=16, swa_period=2, n_kv_shared=4,
                                n_embd_per_layer=16)


@dataclass(frozen=True)
class TinyPair:
    """A text model and the audio projector that feeds it (``name`` = ``<llm-arch>-<projector>``)."""

    text: TextModelSpec
    audio: AudioProjectorSpec

    @property
    def name(self) -> str:
        return f"{self.text.arch}-{self.audio.projector}"


#: Every tiny pair, by name. Real counterparts: Qwen2-Audio / Qwen2.5-Omni (qwen2 + qwen2a), Ultravox (llama +
#: ultravox), Qwen3-Omni (qwen3 + qwen3a); qwen3 and gemma3 (iSWA) text models also take the Qwen2.5-Omni audio tower.
#: Ultravox uses stack factor 4: with v0.5's 8 (and Voxtral's 4) this llama.cpp's libmtmd aborts on encoding
#: (clip.cpp announces 187 tokens per chunk, its graph produces 188); see session.stacked_projector_problem.
TINY_PAIRS: dict[str, TinyPair] = {
    p.name: p
    for p in (
        TinyPair(TextModelSpec("qwen2", CHATML, rope_freq_base=1000000.0), AudioProjectorSpec("qwen2a")),
        TinyPair(
            TextModelSpec("llama", LLAMA3, rope_freq_base=500000.0),
            AudioProjectorSpec("ultravox", stack_factor=4),
        ),
        TinyPair(
            TextModelSpec("qwen3", CHATML, n_head=4, n_head_kv=1, head_dim=32, rope_freq_base=1000000.0),
            AudioProjectorSpec("qwen2a"),
        ),
        TinyPair(
            TextModelSpec("qwen3", CHATML, n_head=4, n_head_kv=1, head_dim=32, rope_freq_base=1000000.0),
            AudioProjectorSpec("qwen3a"),
        ),
        TinyPair(
            TextModelSpec("gemma3", GEMMA, n_head=4, n_head_kv=1, head_dim=32, sliding_window=64),
            AudioProjectorSpec("qwen2a"),
        ),
        TinyPair(
            TextModelSpec("qwen3moe", CHATML, n_head=4, n_head_kv=1, head_dim=32, rope_freq_base=1000000.0,
                          n_ff=32, n_expert=4, n_expert_used=2),
            AudioProjectorSpec("qwen3a"),
        ),
        TinyPair(GEMMA4_E2B_LIKE, AudioProjectorSpec("gemma4a", n_mel=128, n_conv=8)),
        TinyPair(
            TextModelSpec("qwen2", CHATML, rope_freq_base=1000000.0), AudioProjectorSpec("qwen2.5o"),
        ),
        TinyPair(
            TextModelSpec("llama", MISTRAL, rope_freq_base=1000000.0), AudioProjectorSpec("voxtral", stack_factor=4),
        ),
        TinyPair(TextModelSpec("llama", LLAMA3, rope_freq_base=500000.0), AudioProjectorSpec("glma", stack_factor=4)),
        TinyPair(
            TextModelSpec("gemma2", GEMMA, n_head=4, n_head_kv=2, head_dim=32, sliding_window=64),
            AudioProjectorSpec("meralion", stack_factor=3),
        ),
        TinyPair(
            TextModelSpec("qwen2", CHATML, rope_freq_base=1000000.0), AudioProjectorSpec("musicflamingo"),
        ),
        # Gemma 4 Unified (text: gemma4, the tiny E2B layout standing in for its unrecorded one; audio: no encoder)
        TinyPair(GEMMA4_E2B_LIKE, AudioProjectorSpec("gemma4ua", n_layer=0, n_mel=GEMMA4UA_FRAME)),
        # LFM2-Audio (LFM2-1.2B: 16 layers, attention at 2, 5, 8, 10, 12, 14; the rest short convolutions). Text
        # head size 32 here and for granite: a q8_0 KV cache needs whole 32-value blocks per head
        TinyPair(
            TextModelSpec("lfm2", LFM2, n_embd=128, n_layer=6, n_head=4, n_head_kv=2, head_dim=32,
                          rope_freq_base=1000000.0, attn_layers=(2, 5)),
            AudioProjectorSpec("lfm2a", n_mel=128, n_conv=8),
        ),
        # Granite Speech 3.3 (text: granite; audio: 160 inputs = two stacked 80-bin mel frames)
        TinyPair(
            TextModelSpec("granite", GRANITE, n_head=4, n_head_kv=2, head_dim=32, rope_freq_base=10000000.0),
            AudioProjectorSpec("granite_speech", n_mel=160),
        ),
    )
}


#: Whisper-large-v3's encoder (Qwen2-Audio / Qwen2.5-Omni, Voxtral, and as large-v3-turbo Ultravox v0.5): 32 layers,
#: width 1280, 20 heads, FFN 5120, 128 mel bins. Published mmproj GGUFs store it in F16.
_WHISPER_LARGE = dict(n_embd=1280, n_layer=32, n_head=20, n_ff=5120, n_mel=128, weights="f16")

#: Real model sizes, by name: the tiny layouts at the published models' exact shapes (text: Q4_0 as the published
#: Q4_0 GGUFs, audio: F16). Sources: each model's Hugging Face config.json (thinker / text_config and audio_config).
#: Qwen2.5-Omni is written as llama.cpp's plain qwen2 architecture (the converted thinker uses qwen2vl's M-RoPE: the
#: same tensors and cache, another position encoding); Voxtral's text model (Ministral 3B) as llama, whose queries
#: are wider than the model (32 x 128 = 4096 > 3072). Ultravox v0.5 stacks 8 frames (this llama.cpp's libmtmd aborts
#: encoding audio with it, see TINY_PAIRS: its text side and KV cache are what the benchmarks measure).
REAL_SHAPES: dict[str, TinyPair] = {
    "qwen2.5-omni-7b": TinyPair(
        TextModelSpec("qwen2", CHATML, n_embd=3584, n_layer=28, n_head=28, n_head_kv=4, head_dim=128, n_ff=18944,
                      n_ctx_train=32768, rope_freq_base=1000000.0, n_vocab=152064, weights="q4_0"),
        AudioProjectorSpec("qwen2a", **_WHISPER_LARGE)),
    "qwen2.5-omni-3b": TinyPair(
        TextModelSpec("qwen2", CHATML, n_embd=2048, n_layer=36, n_head=16, n_head_kv=2, head_dim=128, n_ff=11008,
                      n_ctx_train=32768, rope_freq_base=1000000.0, n_vocab=151936, weights="q4_0"),
        AudioProjectorSpec("qwen2a", **_WHISPER_LARGE)),
    "voxtral-mini-3b": TinyPair(
        TextModelSpec("llama", LLAMA3, n_embd=3072, n_layer=30, n_head=32, n_head_kv=8, head_dim=128, n_ff=8192,
                      n_ctx_train=131072, rope_freq_base=100000000.0, n_vocab=131072, weights="q4_0"),
        AudioProjectorSpec("voxtral", stack_factor=4, n_hidden=3072, **_WHISPER_LARGE)),
    "ultravox-v0.5-llama-3.2-1b": TinyPair(
        TextModelSpec("llama", LLAMA3, n_embd=2048, n_layer=16, n_head=32, n_head_kv=8, head_dim=64, n_ff=8192,
                      n_ctx_train=131072, rope_freq_base=500000.0, n_vocab=128256, weights="q4_0",
                      tied_output=True),
        AudioProjectorSpec("ultravox", stack_factor=8, n_hidden=4096, **_WHISPER_LARGE)),
    # Gemma 4 E2B's text model (gemma-4-E2B text_config, docs/model-families.md): 35 layers (llama.cpp's gemma4
    # loader names 35 layers E2B), width 1536, 8 query heads and 1 KV head, head size 256 in the SWA layers and 512
    # (global_head_dim) in the full-attention ones, every fifth layer full attention, window 512, the last 20 layers
    # sharing the KV of layers 13 (SWA) / 14 (full), their FFN twice 6144 wide, 256-wide per-layer embeddings over
    # the 262,144-token vocabulary, tied output. Its audio conformer's published size is not recorded here: the pair
    # carries the tiny gemma4a tower (the benchmarks measure the text side and its KV cache).
    "gemma-4-e2b": TinyPair(
        TextModelSpec("gemma4", GEMMA4, n_embd=1536, n_layer=35, n_head=8, n_head_kv=1, head_dim=512,
                      head_dim_swa=256, n_ff=6144, double_wide_mlp=True, sliding_window=512, swa_period=5,
                      n_kv_shared=20, n_embd_per_layer=256, n_ctx_train=131072, rope_freq_base=1000000.0,
                      n_vocab=262144, weights="q4_0", tied_output=True),
        AudioProjectorSpec("gemma4a", n_mel=128, n_conv=8)),
}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (byte-level BPE)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def train_bpe(text: str, n_merges: int) -> tuple[list[str], list[str]]:
    """Train a byte-level BPE on ``text``.

    Parameters
    ----------
    text : str
        Training text.
    n_merges : int
        Number of merges to learn (fewer when no pair repeats).

    Returns
    -------
    tokens : list of str
        The 256 byte tokens (GPT-2 byte encoding) followed by one token per merge.
    merges : list of str
        ``"left right"`` pairs in rank order.
    """
    byte_map = _bytes_to_unicode()
    words = Counter(tuple(byte_map[b] for b in w.encode("utf-8")) for w in _GPT2_PRE.findall(text))
    tokens = [byte_map[b] for b in range(256)]
    merges: list[str] = []
    for _ in range(n_merges):
        pairs: Counter = Counter()
        for word, count in words.items():
            for a, b in zip(word, word[1:]):
                pairs[(a, b)] += count
        if not pairs:
            break
        (a, b), count = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        if count < 2:
            break
        merges.append(f"{a} {b}")
        tokens.append(a + b)
        merged: Counter = Counter()
        for word, c in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += c
        words = merged
    return tokens, merges


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


class _TensorSink:
    """Deterministic random tensors for a GGUF writer, made one at a time while the file is written (a 7B model's
    weights are never all in memory); shapes are given in ggml order (ne0 first)."""

    def __init__(self, writer, seed: int) -> None:
        self.writer = writer
        self.seed = seed
        self.pending: list[tuple[str, object]] = []  # (name, maker) in file order

    def _add(self, name: str, shape: tuple[int, ...], dtype, maker, raw_dtype=None) -> None:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        self.writer.add_tensor_info(name, shape, np.dtype(dtype), nbytes, raw_dtype=raw_dtype)
        self.pending.append((name, maker))

    def array(self, name: str, data_fn, shape: tuple[int, ...], dtype) -> None:
        """A tensor made by ``data_fn()`` (numpy order ``shape``, ``dtype``) when it is written."""
        self._add(name, shape, dtype, data_fn)

    def matrix(self, name: str, ne: tuple[int, ...], dtype=np.float32) -> None:
        """Normal weights of standard deviation 1 / sqrt(fan-in); ``dtype`` a float type or ``"q4_0"``."""
        fan_in = ne[0] if len(ne) == 2 else int(np.prod(ne[:-1]))
        shape = tuple(reversed(ne))
        if isinstance(dtype, str):
            import gguf

            if dtype != "q4_0":
                raise ValueError(f"unknown weight type {dtype!r}")
            rows, blocks = int(np.prod(shape[:-1])), ne[0] // Q4_0_BLOCK
            self._add(name, (rows, blocks * Q4_0_BLOCK_BYTES), np.uint8,
                      lambda: _RepeatedRows(_random_q4_0(_rng(self.seed, name), min(rows, Q4_0_POOL_ROWS), blocks,
                                                         fan_in), rows),
                      raw_dtype=gguf.GGMLQuantizationType.Q4_0)
            return
        self._add(name, shape, dtype,
                  lambda: _rng(self.seed, name).normal(0.0, 1.0 / np.sqrt(fan_in), size=shape).astype(dtype))

    def normal(self, name: str, ne: tuple[int, ...], std: float) -> None:
        shape = tuple(reversed(ne))
        self._add(name, shape, np.float32,
                  lambda: _rng(self.seed, name).normal(0.0, std, size=shape).astype(np.float32))

    def ones(self, name: str, ne: tuple[int, ...]) -> None:
        shape = tuple(reversed(ne))
        self._add(name, shape, np.float32, lambda: np.ones(shape, dtype=np.float32))

    def blocks(self, prefix: str, n_layer: int, layout: list[tuple]) -> None:
        """Add the tensors of every layer ``il`` in ``range(n_layer)``, named ``f"{prefix}{il}.{suffix}"``.

        Parameters
        ----------
        prefix : str
            ``"blk."`` (text model) or ``"a.blk."`` (audio encoder).
        n_layer : int
        layout : list of tuple
            ``(suffix, kind, ne, arg)`` in file order, the same for every layer: kind ``"matrix"`` (arg: dtype or
            ``"q4_0"``), ``"normal"`` (arg: standard deviation) or ``"ones"`` (arg unused).
        """
        for il in range(n_layer):
            self.layer(f"{prefix}{il}.", layout)

    def layer(self, prefix: str, layout: list[tuple]) -> None:
        """Write the tensors of one layer, named ``prefix + suffix`` (``layout`` as in :meth:`blocks`)."""
        for suffix, kind, ne, arg in layout:
            name = prefix + suffix
            if kind == "matrix":
                self.matrix(name, ne, dtype=arg)
            elif kind == "normal":
                self.normal(name, ne, arg)
            else:
                self.ones(name, ne)

    def write_file(self, progress=None) -> None:
        """Write the header, metadata and every tensor (made now, one at a time), and close the writer.

        Parameters
        ----------
        progress : callable, optional
            Called with ``(tensors written, tensors in all)`` after each tensor.
        """
        w = self.writer
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for i, (_, maker) in enumerate(self.pending):
            w.write_tensor_data(maker())
            if progress is not None:
                progress(i + 1, len(self.pending))
        w.close()


#: Distinct random rows of a Q4_0 matrix; a larger matrix repeats them (a real shape's 2.3 G-value per-layer
#: embedding is then written at the disk's speed, not the random generator's; what is timed does not depend on the
#: values).
Q4_0_POOL_ROWS = 1024


class _RepeatedRows:
    """``n_rows`` rows cycling through ``pool``'s, written straight from the pool (what a GGUF writer calls on a
    tensor: ``nbytes`` and ``tofile``)."""

    def __init__(self, pool: np.ndarray, n_rows: int) -> None:
        self.pool, self.n_rows = pool, n_rows
        self.nbytes = n_rows * pool.shape[1]

    def tofile(self, f) -> None:
        for start in range(0, self.n_rows, self.pool.shape[0]):
            self.pool[:min(self.pool.shape[0], self.n_rows - start)].tofile(f)


def _random_q4_0(rng: np.random.Generator, rows: int, blocks: int, fan_in: int) -> np.ndarray:
    """``rows`` x ``blocks`` random Q4_0 blocks (uint8, ``[rows, blocks * 18]``): one F16 scale d per block and
    uniform nibbles q, the weights (q - 8) d then having standard deviation 1 / sqrt(fan_in) as :meth:`matrix`."""
    out = np.empty((rows, blocks, Q4_0_BLOCK_BYTES), dtype=np.uint8)
    out[:, :, 2:] = rng.integers(0, 256, size=(rows, blocks, Q4_0_BLOCK_BYTES - 2), dtype=np.uint8)
    nibble_std = np.sqrt((16 * 16 - 1) / 12.0)  # uniform on the 16 integers -8 .. 7
    scale = np.array([1.0 / (nibble_std * np.sqrt(fan_in))], dtype=np.float16)
    out[:, :, :2] = scale.view(np.uint8)
    return out.reshape(rows, blocks * Q4_0_BLOCK_BYTES)


def _text_block_layout(spec: TextModelSpec) -> list[tuple]:
    """Tensors of one text-model layer (``src/models/<arch>.cpp``), as :meth:`_TensorSink.blocks` takes them."""
    d, dh, hq, hkv, arch = spec.n_embd, spec.head_dim, spec.n_head, spec.n_head_kv, spec.arch
    f32 = np.float32 if spec.weights == "f32" else spec.weights  # the matrices' type
    layout = [("attn_norm.weight", "ones", (d,), None), ("attn_q.weight", "matrix", (d, hq * dh), f32),
              ("attn_k.weight", "matrix", (d, hkv * dh), f32), ("attn_v.weight", "matrix", (d, hkv * dh), f32)]
    if arch == "qwen2":
        layout += [("attn_q.bias", "normal", (hq * dh,), 0.02), ("attn_k.bias", "normal", (hkv * dh,), 0.02),
                   ("attn_v.bias", "normal", (hkv * dh,), 0.02)]
    if arch in ("qwen3", "qwen3moe", "gemma3"):
        layout += [("attn_q_norm.weight", "ones", (dh,), None), ("attn_k_norm.weight", "ones", (dh,), None)]
    layout.append(("attn_output.weight", "matrix", (hq * dh, d), f32))
    if arch in ("gemma2", "gemma3"):
        layout.append(("post_attention_norm.weight", "ones", (d,), None))
    if arch == "qwen3moe":  # router + stacked experts (src/models/qwen3moe.cpp)
        f, e = spec.n_ff, spec.n_expert
        layout += [("ffn_norm.weight", "ones", (d,), None), ("ffn_gate_inp.weight", "matrix", (d, e), f32),
                   ("ffn_gate_exps.weight", "matrix", (d, f, e), f32), ("ffn_down_exps.weight", "matrix", (f, d, e), f32),
                   ("ffn_up_exps.weight", "matrix", (d, f, e), f32)]
        return layout
    layout += [("ffn_norm.weight", "ones", (d,), None), ("ffn_gate.weight", "matrix", (d, spec.n_ff), f32),
               ("ffn_up.weight", "matrix", (d, spec.n_ff), f32), ("ffn_down.weight", "matrix", (spec.n_ff, d), f32)]
    if arch in ("gemma2", "gemma3"):
        layout.append(("post_ffw_norm.weight", "ones", (d,), None))
    return layout


def _gemma3n_layer_layout(spec: TextModelSpec) -> list[tuple]:
    """Tensors of a gemma3n layer (``src/models/gemma3n.cpp``): every layer has K/V projections (the layers sharing
    another layer's KV do not use theirs), post norms, the per-layer-embedding block, AltUp and LAuReL."""
    d, dh, hq, hkv, f32, a = spec.n_embd, spec.head_dim, spec.n_head, spec.n_head_kv, np.float32, GEMMA3N_ALTUP
    return [
        ("attn_norm.weight", "ones", (d,), None), ("attn_q.weight", "matrix", (d, hq * dh), f32),
        ("attn_k.weight", "matrix", (d, hkv * dh), f32), ("attn_v.weight", "matrix", (d, hkv * dh), f32),
        ("attn_output.weight", "matrix", (hq * dh, d), f32), ("attn_q_norm.weight", "ones", (dh,), None),
        ("attn_k_norm.weight", "ones", (dh,), None), ("post_attention_norm.weight", "ones", (d,), None),
        ("ffn_norm.weight", "ones", (d,), None), ("ffn_gate.weight", "matrix", (d, spec.n_ff), f32),
        ("ffn_up.weight", "matrix", (d, spec.n_ff), f32), ("ffn_down.weight", "matrix", (spec.n_ff, d), f32),
        ("post_ffw_norm.weight", "ones", (d,), None),
        ("inp_gate.weight", "matrix", (d, GEMMA3N_PER_LAYER), f32),
        ("proj.weight", "matrix", (GEMMA3N_PER_LAYER, d), f32), ("post_norm.weight", "ones", (d,), None),
        ("altup_correct_coef.weight", "normal", (a, a), 0.1), ("altup_correct_scale.weight", "ones", (d,), None),
        ("altup_predict_coef.weight", "normal", (a, a * a), 0.1), ("altup_router.weight", "matrix", (d, a), f32),
        ("altup_router_norm.weight", "ones", (d,), None),
        ("laurel_l.weight", "matrix", (d, GEMMA3N_LAUREL_RANK), f32),
        ("laurel_r.weight", "matrix", (GEMMA3N_LAUREL_RANK, d), f32), ("laurel_post_norm.weight", "ones", (d,), None),
    ]


def _lfm2_layer_layout(spec: TextModelSpec, il: int) -> list[tuple]:
    """Tensors of lfm2 layer ``il`` (``src/models/lfm2.cpp``): an attention layer (q / k norms) or a gated short
    convolution (in_proj to 3 x n_embd, a depthwise kernel of ``shortconv_l_cache`` taps, out_proj), then the FFN."""
    d, dh, hq, hkv = spec.n_embd, spec.head_dim, spec.n_head, spec.n_head_kv
    f32 = np.float32 if spec.weights == "f32" else spec.weights
    layout = [("attn_norm.weight", "ones", (d,), None)]
    if spec.has_kv(il):
        layout += [("attn_q.weight", "matrix", (d, hq * dh), f32), ("attn_k.weight", "matrix", (d, hkv * dh), f32),
                   ("attn_v.weight", "matrix", (d, hkv * dh), f32), ("attn_output.weight", "matrix", (hq * dh, d), f32),
                   ("attn_q_norm.weight", "ones", (dh,), None), ("attn_k_norm.weight", "ones", (dh,), None)]
    else:
        layout += [("shortconv.conv.weight", "matrix", (spec.shortconv_l_cache, d), np.float32),
                   ("shortconv.in_proj.weight", "matrix", (d, 3 * d), f32),
                   ("shortconv.out_proj.weight", "matrix", (d, d), f32)]
    layout += [("ffn_norm.weight", "ones", (d,), None), ("ffn_gate.weight", "matrix", (d, spec.n_ff), f32),
               ("ffn_up.weight", "matrix", (d, spec.n_ff), f32), ("ffn_down.weight", "matrix", (spec.n_ff, d), f32)]
    return layout


def _write_granitehybrid_layer(t: "_TensorSink", spec: TextModelSpec, il: int) -> None:
    """Tensors of granitehybrid layer ``il`` (``src/models/granite-hybrid.cpp``): a Mamba2 mixer (input projection to
    z, x, B, C and dt; a depthwise convolution over x, B, C; dt bias, A < 0 and D per head; a grouped RMS norm; the
    output projection) or an attention layer, then the dense FFN."""
    d, dh, hq, hkv = spec.n_embd, spec.head_dim, spec.n_head, spec.n_head_kv
    f32 = np.float32 if spec.weights == "f32" else spec.weights
    prefix = f"blk.{il}."
    t.ones(prefix + "attn_norm.weight", (d,))
    if spec.has_kv(il):
        t.layer(prefix, [("attn_q.weight", "matrix", (d, hq * dh), f32), ("attn_k.weight", "matrix", (d, hkv * dh), f32),
                         ("attn_v.weight", "matrix", (d, hkv * dh), f32),
                         ("attn_output.weight", "matrix", (hq * dh, d), f32)])
    else:
        inner, heads, xbc = 2 * d, spec.ssm_heads, 2 * d + 2 * spec.ssm_groups * spec.ssm_state
        t.matrix(prefix + "ssm_in.weight", (d, inner + xbc + heads), dtype=f32)
        t.matrix(prefix + "ssm_conv1d.weight", (spec.ssm_conv, xbc))
        t.normal(prefix + "ssm_conv1d.bias", (xbc,), 0.02)
        t.normal(prefix + "ssm_dt.bias", (heads,), 0.5)
        t.array(prefix + "ssm_a", lambda: -np.linspace(0.5, 2.0, heads, dtype=np.float32).reshape(heads, 1),
                (heads, 1), np.float32)  # A < 0: a decaying state
        t.ones(prefix + "ssm_d", (1, heads))
        t.ones(prefix + "ssm_norm.weight", (inner // spec.ssm_groups, spec.ssm_groups))
        t.matrix(prefix + "ssm_out.weight", (inner, d), dtype=f32)
    t.layer(prefix, [("ffn_norm.weight", "ones", (d,), None), ("ffn_gate.weight", "matrix", (d, spec.n_ff), f32),
                     ("ffn_down.weight", "matrix", (spec.n_ff, d), f32), ("ffn_up.weight", "matrix", (d, spec.n_ff), f32)])


def _gemma4_layer_layout(spec: TextModelSpec, il: int) -> list[tuple]:
    """Tensors of gemma4 layer ``il`` (``src/models/gemma4.cpp``): the head size depends on the layer type, a layer
    sharing another layer's KV has no K/V projections, and every layer has its per-layer-embedding block."""
    d, hq, hkv, f = spec.n_embd, spec.n_head, spec.n_head_kv, spec.layer_n_ff(il)
    f32 = np.float32 if spec.weights == "f32" else spec.weights  # the matrices' type
    dh = spec.layer_head_dim(il)
    layout = [("attn_norm.weight", "ones", (d,), None), ("attn_q.weight", "matrix", (d, hq * dh), f32)]
    if spec.has_kv(il):
        layout += [("attn_k.weight", "matrix", (d, hkv * dh), f32), ("attn_v.weight", "matrix", (d, hkv * dh), f32)]
    layout += [("attn_output.weight", "matrix", (hq * dh, d), f32), ("attn_q_norm.weight", "ones", (dh,), None)]
    if spec.has_kv(il):
        layout.append(("attn_k_norm.weight", "ones", (dh,), None))
    layout += [("post_attention_norm.weight", "ones", (d,), None), ("ffn_norm.weight", "ones", (d,), None),
               ("ffn_gate.weight", "matrix", (d, f), f32), ("ffn_up.weight", "matrix", (d, f), f32),
               ("ffn_down.weight", "matrix", (f, d), f32), ("post_ffw_norm.weight", "ones", (d,), None),
               ("inp_gate.weight", "matrix", (d, spec.n_embd_per_layer), f32),
               ("proj.weight", "matrix", (spec.n_embd_per_layer, d), f32), ("post_norm.weight", "ones", (d,), None)]
    return layout


def _audio_block_layout(spec: AudioProjectorSpec) -> list[tuple]:
    """Tensors of one Whisper-style encoder layer (``models/whisper-enc.cpp``), as :meth:`_TensorSink.blocks`
    takes them."""
    d, f, f32 = spec.n_embd, spec.n_ff, AUDIO_WEIGHT_TYPES[spec.weights]  # the matrices' type
    return [
        ("ln1.weight", "ones", (d,), None), ("ln1.bias", "normal", (d,), 0.02),
        ("attn_q.weight", "matrix", (d, d), f32), ("attn_q.bias", "normal", (d,), 0.02),
        ("attn_k.weight", "matrix", (d, d), f32),
        ("attn_v.weight", "matrix", (d, d), f32), ("attn_v.bias", "normal", (d,), 0.02),
        ("attn_out.weight", "matrix", (d, d), f32), ("attn_out.bias", "normal", (d,), 0.02),
        ("ln2.weight", "ones", (d,), None), ("ln2.bias", "normal", (d,), 0.02),
        ("ffn_up.weight", "matrix", (d, f), f32), ("ffn_up.bias", "normal", (f,), 0.02),
        ("ffn_down.weight", "matrix", (f, d), f32), ("ffn_down.bias", "normal", (d,), 0.02),
    ]


def write_text_model(path: str | pathlib.Path, spec: TextModelSpec, seed: int = 0, progress=None) -> None:
    """Write a random-weight text-model GGUF (``spec.weights`` matrices, byte-level BPE vocabulary padded to
    ``spec.n_vocab``, the family's chat template).

    Parameters
    ----------
    path : str or pathlib.Path
        Output file (overwritten).
    spec : TextModelSpec
    seed : int
        Seed of the random weights.
    progress : callable, optional
        Called with ``(tensors written, tensors in all)`` after each tensor.
    """
    import gguf

    fam = spec.family
    tokens, merges = train_bpe(_BPE_CORPUS, n_merges=96)
    tokens = tokens + list(fam.specials)
    types = [TOKEN_NORMAL] * (len(tokens) - len(fam.specials)) + [TOKEN_CONTROL] * len(fam.specials)
    if spec.n_vocab > len(tokens):  # a real model's vocabulary size: unused tokens fill it up
        n_pad = spec.n_vocab - len(tokens)
        tokens = tokens + [f"<|unused_{i}|>" for i in range(n_pad)]
        types = types + [TOKEN_UNUSED] * n_pad
    n_vocab = len(tokens)

    w = gguf.GGUFWriter(str(path), spec.arch)
    arch = spec.arch
    w.add_name(f"tiny-{arch}")
    w.add_description("random-weight test model (audiokv-edge tiny_models); its output is meaningless")
    w.add_file_type(0 if spec.weights == "f32" else 2)  # all F32, or mostly Q4_0
    w.add_context_length(spec.n_ctx_train)
    w.add_embedding_length(spec.n_embd)
    w.add_block_count(spec.n_layer)
    if spec.double_wide_mlp:
        w.add_feed_forward_length([spec.layer_n_ff(il) for il in range(spec.n_layer)])
    else:
        w.add_feed_forward_length(spec.n_ff)
    w.add_head_count(spec.n_head)
    if arch in ("lfm2", "granitehybrid"):  # per layer: 0 marks a recurrent layer (llama.cpp's is_recr)
        w.add_head_count_kv([spec.n_head_kv if spec.has_kv(il) else 0 for il in range(spec.n_layer)])
        if arch == "lfm2":
            w.add_shortconv_l_cache(spec.shortconv_l_cache)
        else:  # Mamba2 (src/models/granite-hybrid.cpp)
            w.add_ssm_conv_kernel(spec.ssm_conv)
            w.add_ssm_inner_size(2 * spec.n_embd)
            w.add_ssm_state_size(spec.ssm_state)
            w.add_ssm_time_step_rank(spec.ssm_heads)
            w.add_ssm_group_count(spec.ssm_groups)
    else:
        w.add_head_count_kv(spec.n_head_kv)
    w.add_key_length(spec.head_dim)
    w.add_value_length(spec.head_dim)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(spec.rope_freq_base)
    w.add_vocab_size(n_vocab)
    if arch in ("gemma2", "gemma3"):
        w.add_sliding_window(spec.sliding_window)
        w.add_sliding_window_pattern(2)  # layers 0, 2, ... SWA; 1, 3, ... full attention
        w.add_rope_freq_base_swa(10000.0)
    if arch == "qwen3moe":
        w.add_expert_count(spec.n_expert)
        w.add_expert_used_count(spec.n_expert_used)
        w.add_expert_feed_forward_length(spec.n_ff)
    if arch == "gemma2":
        w.add_attn_logit_softcapping(50.0)
        w.add_final_logit_softcapping(30.0)
    if arch == "gemma4":
        w.add_sliding_window(spec.sliding_window)
        w.add_sliding_window_pattern([spec.is_swa(il) for il in range(spec.n_layer)])
        w.add_rope_freq_base_swa(10000.0)
        w.add_key_length_swa(spec.head_dim_swa)
        w.add_value_length_swa(spec.head_dim_swa)
        w.add_rope_dimension_count(spec.head_dim)
        w.add_rope_dimension_count_swa(spec.head_dim_swa)
        w.add_shared_kv_layers(spec.n_kv_shared)
        w.add_embedding_length_per_layer_input(spec.n_embd_per_layer)
        w.add_final_logit_softcapping(30.0)
    if arch == "gemma3n":  # the SWA period (5) and the KV-owning layers (20) are fixed in llama.cpp
        w.add_sliding_window(spec.sliding_window)
        w.add_rope_freq_base_swa(10000.0)
        w.add_shared_kv_layers(spec.n_kv_shared)
        w.add_embedding_length_per_layer_input(GEMMA3N_PER_LAYER)
        w.add_final_logit_softcapping(30.0)
    if arch in ("granite", "granitehybrid"):  # Granite 3.3's multipliers (src/models/granite.cpp reads all four)
        w.add_embedding_scale(12.0)
        w.add_residual_scale(0.22)
        w.add_attention_scale(1.0 / spec.head_dim)
        w.add_logit_scale(8.0)

    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(fam.pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    index = {t: i for i, t in enumerate(tokens)}
    if fam.bos is not None:
        w.add_bos_token_id(index[fam.bos])
    w.add_eos_token_id(index[fam.eos])
    if fam.eot is not None:
        w.add_eot_token_id(index[fam.eot])
    w.add_add_bos_token(fam.add_bos)
    w.add_chat_template(fam.template)

    t = _TensorSink(w, seed)
    d = spec.n_embd
    if spec.weights == "f32":
        t.normal("token_embd.weight", (d, n_vocab), 1.0 / np.sqrt(d) if not arch.startswith("gemma") else 0.05)
    else:
        t.matrix("token_embd.weight", (d, n_vocab), dtype=spec.weights)
    t.ones("token_embd_norm.weight" if arch == "lfm2" else "output_norm.weight", (d,))  # lfm2: llama.cpp's name
    # gemma2 and lfm2 tie their output head to token_embd (llama.cpp loads none)
    tied = spec.tied_output or arch in ("gemma2", "gemma3n", "lfm2")
    if spec.weights != "f32":
        if not tied:
            t.matrix("output.weight", (d, n_vocab), dtype=spec.weights)
    elif not tied:
        # untied output head whose rows for non-printable byte tokens and for specials other than end-of-turn are
        # zero: greedy decoding then emits printable (if meaningless) text and may stop, as a chat model would
        def head() -> np.ndarray:
            rows = _rng(seed, "output.weight").normal(0.0, 1.0 / np.sqrt(d), size=(n_vocab, d))
            printable = {i for i in range(32, 127)} | {10}
            stop_ids = {index[fam.eos]} | ({index[fam.eot]} if fam.eot else set())
            for i in range(n_vocab):
                if (i < 256 and i not in printable) or (types[i] == TOKEN_CONTROL and i not in stop_ids):
                    rows[i] = 0.0
            return rows.astype(np.float32)

        t.array("output.weight", head, (n_vocab, d), np.float32)
    if arch == "gemma4":
        n_pl = spec.n_embd_per_layer * spec.n_layer
        if spec.weights == "f32":
            t.normal("per_layer_token_embd.weight", (n_pl, n_vocab), 0.05)
        else:  # 2.3 G values at E2B's size: written as random blocks
            t.matrix("per_layer_token_embd.weight", (n_pl, n_vocab), dtype=spec.weights)
        t.matrix("per_layer_model_proj.weight", (d, n_pl), dtype=np.float32 if spec.weights == "f32" else spec.weights)
        t.ones("per_layer_proj_norm.weight", (spec.n_embd_per_layer,))
        t.ones("rope_freqs.weight", (spec.head_dim // 2,))  # proportional RoPE of the full-attention layers
        for il in range(spec.n_layer):
            t.layer(f"blk.{il}.", _gemma4_layer_layout(spec, il))
    elif arch == "gemma3n":
        n_pl, a = GEMMA3N_PER_LAYER * spec.n_layer, GEMMA3N_ALTUP
        t.matrix("altup_proj.weight", (d, d, a - 1))
        t.matrix("altup_unembd_proj.weight", (d, d, a - 1))
        t.normal("per_layer_token_embd.weight", (n_pl, n_vocab), 0.05)
        t.matrix("per_layer_model_proj.weight", (d, n_pl))
        t.ones("per_layer_proj_norm.weight", (GEMMA3N_PER_LAYER,))
        t.blocks("blk.", spec.n_layer, _gemma3n_layer_layout(spec))
    elif arch == "lfm2":
        for il in range(spec.n_layer):
            t.layer(f"blk.{il}.", _lfm2_layer_layout(spec, il))
    elif arch == "granitehybrid":
        for il in range(spec.n_layer):
            _write_granitehybrid_layer(t, spec, il)
    else:
        t.blocks("blk.", spec.n_layer, _text_block_layout(spec))
    t.write_file(progress)


def _write_gemma4a(t: _TensorSink, spec: AudioProjectorSpec, n_embd_text: int) -> None:
    """Gemma 4's audio conformer (``models/gemma4a.cpp``, tensors of ``clip.cpp`` PROJECTOR_TYPE_GEMMA4A): two
    3x3 stride-2 conv2d with channel norms, an input projection, conformer blocks (half-step FFN, local attention
    with relative positions, depthwise conv module, half-step FFN), the output projection and the embedder."""
    d, f, c, f32 = spec.n_embd, spec.n_ff, spec.n_conv, np.float32
    t.matrix("a.conv1d.0.weight", (3, 3, 1, c), dtype=np.float16)
    t.normal("a.conv1d.0.bias", (c,), 0.02)
    t.ones("a.conv1d.0.norm.weight", (c,))
    t.matrix("a.conv1d.1.weight", (3, 3, c, c), dtype=np.float16)
    t.normal("a.conv1d.1.bias", (c,), 0.02)
    t.ones("a.conv1d.1.norm.weight", (c,))
    freq = ((spec.n_mel - 1) // 2) // 2 + 1  # two stride-2, pad-1 convolutions over the mel bins
    t.matrix("a.input_projection.weight", (c * freq, d))
    t.blocks("a.blk.", spec.n_layer, [
        ("ffn_norm.weight", "ones", (d,), None), ("ffn_up.weight", "matrix", (d, f), f32),
        ("ffn_down.weight", "matrix", (f, d), f32), ("ffn_post_norm.weight", "ones", (d,), None),
        ("attn_pre_norm.weight", "ones", (d,), None), ("attn_q.weight", "matrix", (d, d), f32),
        ("attn_k.weight", "matrix", (d, d), f32), ("attn_v.weight", "matrix", (d, d), f32),
        ("attn_out.weight", "matrix", (d, d), f32), ("per_dim_scale.weight", "ones", (d // spec.n_head,), None),
        ("attn_k_rel.weight", "matrix", (d, d), f32), ("attn_post_norm.weight", "ones", (d,), None),
        ("norm_conv.weight", "ones", (d,), None), ("conv_pw1.weight", "matrix", (d, 2 * d), f32),
        ("conv_dw.weight", "matrix", (5, d), f32), ("conv_norm.weight", "ones", (d,), None),
        ("conv_pw2.weight", "matrix", (d, d), f32), ("ffn_norm_1.weight", "ones", (d,), None),
        ("ffn_up_1.weight", "matrix", (d, f), f32), ("ffn_down_1.weight", "matrix", (f, d), f32),
        ("ffn_post_norm_1.weight", "ones", (d,), None), ("ln2.weight", "ones", (d,), None),
    ])
    t.matrix("a.pre_encode.out.weight", (d, spec.n_hidden))
    t.ones("mm.a.soft_emb_norm.weight", (spec.n_hidden,))
    t.matrix("mm.a.input_projection.weight", (spec.n_hidden, n_embd_text))


#: Width of the sinusoidal relative-position input that ``models/conformer.cpp`` feeds every lfm2a layer's
#: ``linear_pos`` (clip.cpp fixes it at 512 whatever the encoder's width).
LFM2A_POS_WIDTH = 512


def _stride2(n: int, times: int) -> int:
    """Length after ``times`` 3-tap, stride-2, pad-1 convolutions."""
    for _ in range(times):
        n = (n - 1) // 2 + 1
    return n


def _write_lfm2a(t: _TensorSink, spec: AudioProjectorSpec, n_embd_text: int) -> None:
    """LFM2-Audio's FastConformer (``models/conformer.cpp``, tensors of ``clip.cpp`` PROJECTOR_TYPE_LFM2A): conv2d,
    depthwise + pointwise conv2d twice (three stride-2 steps), the output projection; conformer blocks (half-step
    FFN, relative-position attention with u / v biases, GLU + depthwise conv module, half-step FFN); a layer-norm +
    GELU MLP adapter. Conv kernels F32 as the converter writes them (ggml_ssm_conv needs F32)."""
    d, f, c, h, f32 = spec.n_embd, spec.n_ff, spec.n_conv, spec.n_hidden, np.float32
    mat = AUDIO_WEIGHT_TYPES[spec.weights]
    for i, ne in ((0, (3, 3, 1, c)), (2, (3, 3, 1, c)), (3, (1, 1, c, c)), (5, (3, 3, 1, c)), (6, (1, 1, c, c))):
        t.matrix(f"a.conv1d.{i}.weight", ne, dtype=f32)
        t.normal(f"a.conv1d.{i}.bias", (1, 1, c), 0.02)
    t.matrix("a.pre_encode.out.weight", (c * _stride2(spec.n_mel, 3), d), dtype=mat)
    t.normal("a.pre_encode.out.bias", (d,), 0.02)
    # the converter maps LFM2-Audio's output-codebook embedding here; the graph only asserts >= frames / 2 rows
    t.normal("a.position_embd.weight", (n_embd_text, WHISPER_POSITIONS), 0.05)
    dh = d // spec.n_head
    t.blocks("a.blk.", spec.n_layer, [
        ("ffn_norm.weight", "ones", (d,), None), ("ffn_norm.bias", "normal", (d,), 0.02),
        ("ffn_up.weight", "matrix", (d, f), mat), ("ffn_up.bias", "normal", (f,), 0.02),
        ("ffn_down.weight", "matrix", (f, d), mat), ("ffn_down.bias", "normal", (d,), 0.02),
        ("ln1.weight", "ones", (d,), None), ("ln1.bias", "normal", (d,), 0.02),
        ("attn_q.weight", "matrix", (d, d), mat), ("attn_q.bias", "normal", (d,), 0.02),
        ("attn_k.weight", "matrix", (d, d), mat), ("attn_k.bias", "normal", (d,), 0.02),
        ("attn_v.weight", "matrix", (d, d), mat), ("attn_v.bias", "normal", (d,), 0.02),
        ("attn_out.weight", "matrix", (d, d), mat), ("attn_out.bias", "normal", (d,), 0.02),
        ("pos_bias_u", "normal", (dh, spec.n_head), 0.02), ("pos_bias_v", "normal", (dh, spec.n_head), 0.02),
        ("linear_pos.weight", "matrix", (LFM2A_POS_WIDTH, d), mat),
        ("norm_conv.weight", "ones", (d,), None), ("norm_conv.bias", "normal", (d,), 0.02),
        ("conv_pw1.weight", "matrix", (d, 2 * d), mat), ("conv_pw1.bias", "normal", (2 * d,), 0.02),
        ("conv_dw.weight", "matrix", (9, d), f32), ("conv_dw.bias", "normal", (d,), 0.02),
        ("conv_norm.weight", "ones", (d,), None), ("conv_norm.bias", "normal", (d,), 0.02),
        ("conv_pw2.weight", "matrix", (d, d), mat), ("conv_pw2.bias", "normal", (d,), 0.02),
        ("ffn_norm_1.weight", "ones", (d,), None), ("ffn_norm_1.bias", "normal", (d,), 0.02),
        ("ffn_up_1.weight", "matrix", (d, f), mat), ("ffn_up_1.bias", "normal", (f,), 0.02),
        ("ffn_down_1.weight", "matrix", (f, d), mat), ("ffn_down_1.bias", "normal", (d,), 0.02),
        ("ln2.weight", "ones", (d,), None), ("ln2.bias", "normal", (d,), 0.02),
    ])
    t.ones("mm.a.mlp.0.weight", (d,))
    t.normal("mm.a.mlp.0.bias", (d,), 0.02)
    t.matrix("mm.a.mlp.1.weight", (d, h), dtype=mat)
    t.normal("mm.a.mlp.1.bias", (h,), 0.02)
    t.matrix("mm.a.mlp.3.weight", (h, n_embd_text), dtype=mat)
    t.normal("mm.a.mlp.3.bias", (n_embd_text,), 0.02)


def _write_granite_speech(t: _TensorSink, spec: AudioProjectorSpec, n_embd_text: int) -> None:
    """Granite Speech's encoder and projector (``models/granite-speech.cpp``, tensors of ``clip.cpp``
    PROJECTOR_TYPE_GRANITE_SPEECH): input projection of the two stacked mel frames; conformer blocks (half-step FFN,
    block-local attention with Shaw relative positions, GLU + depthwise conv with folded batch norm, half-step FFN)
    with a CTC branch after the middle block; a two-block Q-Former (learned queries, self- and cross-attention over
    each window of frames) and the linear projection to the text model."""
    d, f, h, f32 = spec.n_embd, spec.n_ff, spec.n_hidden, np.float32
    mat = AUDIO_WEIGHT_TYPES[spec.weights]
    dh = d // spec.n_head
    t.matrix("a.input_projection.weight", (spec.n_mel, d), dtype=mat)
    t.normal("a.input_projection.bias", (d,), 0.02)
    t.blocks("a.blk.", spec.n_layer, [
        ("attn_q.weight", "matrix", (d, d), mat), ("attn_k.weight", "matrix", (d, d), mat),
        ("attn_v.weight", "matrix", (d, d), mat), ("attn_out.weight", "matrix", (d, d), mat),
        ("attn_out.bias", "normal", (d,), 0.02), ("ln1.weight", "ones", (d,), None), ("ln1.bias", "normal", (d,), 0.02),
        ("ln2.weight", "ones", (d,), None), ("ln2.bias", "normal", (d,), 0.02),
        ("ffn_up.weight", "matrix", (d, f), mat), ("ffn_up.bias", "normal", (f,), 0.02),
        ("ffn_down.weight", "matrix", (f, d), mat), ("ffn_down.bias", "normal", (d,), 0.02),
        ("attn_rel_pos_emb", "normal", (dh, 2 * spec.max_pos_emb + 1), 0.02),
        ("ffn_norm.weight", "ones", (d,), None), ("ffn_norm.bias", "normal", (d,), 0.02),
        ("ffn_norm_1.weight", "ones", (d,), None), ("ffn_norm_1.bias", "normal", (d,), 0.02),
        ("ffn_up_1.weight", "matrix", (d, f), mat), ("ffn_up_1.bias", "normal", (f,), 0.02),
        ("ffn_down_1.weight", "matrix", (f, d), mat), ("ffn_down_1.bias", "normal", (d,), 0.02),
        ("norm_conv.weight", "ones", (d,), None), ("norm_conv.bias", "normal", (d,), 0.02),
        ("conv_norm.weight", "ones", (d,), None), ("conv_norm.bias", "normal", (d,), 0.02),
        ("conv_dw.weight", "matrix", (spec.conv_kernel, d), f32),
        ("conv_pw1.weight", "matrix", (d, 2 * d), mat), ("conv_pw1.bias", "normal", (2 * d,), 0.02),
        ("conv_pw2.weight", "matrix", (d, d), mat), ("conv_pw2.bias", "normal", (d,), 0.02),
    ])
    t.matrix("a.enc_ctc_out.weight", (d, spec.n_ctc), dtype=mat)
    t.normal("a.enc_ctc_out.bias", (spec.n_ctc,), 0.02)
    t.matrix("a.enc_ctc_out_mid.weight", (spec.n_ctc, d), dtype=mat)
    t.normal("a.enc_ctc_out_mid.bias", (d,), 0.02)
    t.normal("a.proj_query", (d, spec.proj_window // spec.proj_downsample), 0.5)
    t.ones("a.proj_norm.weight", (d,))
    t.normal("a.proj_norm.bias", (d,), 0.02)
    for il in range(2):  # clip.cpp loads two Q-Former blocks
        t.layer(f"a.proj_blk.{il}.", [
            *[(f"{part}.{kind}", "matrix" if kind == "weight" else "normal", (d, d) if kind == "weight" else (d,),
               mat if kind == "weight" else 0.02)
              for part in ("self_attn_q", "self_attn_k", "self_attn_v", "self_attn_out")
              for kind in ("weight", "bias")],
            ("self_attn_norm.weight", "ones", (d,), None), ("self_attn_norm.bias", "normal", (d,), 0.02),
            *[(f"{part}.{kind}", "matrix" if kind == "weight" else "normal", (d, d) if kind == "weight" else (d,),
               mat if kind == "weight" else 0.02)
              for part in ("cross_attn_q", "cross_attn_k", "cross_attn_v", "cross_attn_out")
              for kind in ("weight", "bias")],
            ("cross_attn_norm.weight", "ones", (d,), None), ("cross_attn_norm.bias", "normal", (d,), 0.02),
            ("ffn_up.weight", "matrix", (d, h), mat), ("ffn_up.bias", "normal", (h,), 0.02),
            ("ffn_down.weight", "matrix", (h, d), mat), ("ffn_down.bias", "normal", (d,), 0.02),
            ("ffn_norm.weight", "ones", (d,), None), ("ffn_norm.bias", "normal", (d,), 0.02),
        ])
    t.matrix("a.proj_linear.weight", (d, n_embd_text), dtype=mat)
    t.normal("a.proj_linear.bias", (n_embd_text,), 0.02)


def _write_mimo_audio(t: _TensorSink, spec: AudioProjectorSpec, n_embd_text: int) -> None:
    """MiMo-Audio's tokenizer encoder and MiMo-V2.5's audio connector (``models/mimo-audio.cpp``, tensors of
    ``clip.cpp`` PROJECTOR_TYPE_MIMO_AUDIO): two conv1d (stride 1, 2), transformer layers (RoPE, causal: full or
    windowed, a skip from layer 3), post norm, a stride-2 downsampling conv + norm, the residual-VQ codebooks and the
    code embeddings, the local transformer (RMS norms, SiLU-gated FFN) and the two-matrix projection."""
    d, f, h, f16 = spec.n_embd, spec.n_ff, spec.n_hidden, np.float16
    mat = AUDIO_WEIGHT_TYPES[spec.weights]
    t.matrix("a.conv1d.1.weight", (3, spec.n_mel, d), dtype=f16)
    t.normal("a.conv1d.1.bias", (1, d), 0.02)
    t.matrix("a.conv1d.2.weight", (3, d, d), dtype=f16)
    t.normal("a.conv1d.2.bias", (1, d), 0.02)
    t.blocks("a.blk.", spec.n_layer, _audio_block_layout(spec))
    t.ones("a.post_ln.weight", (d,))
    t.normal("a.post_ln.bias", (d,), 0.02)
    t.matrix("a.downsample.conv.weight", (2, d, d), dtype=f16)
    t.ones("a.downsample.norm.weight", (d,))
    t.normal("a.downsample.norm.bias", (d,), 0.02)
    t.normal("a.rvq.codebook.weight", (d, spec.rvq_bins, spec.rvq_quantizers), 1.0)
    t.normal("mm.a.code_embd.weight", (d, spec.rvq_bins, spec.rvq_quantizers), 0.1)
    for il in range(spec.local_layers):
        t.layer(f"mm.a.local_blk.{il}.", [
            ("attn_q.weight", "matrix", (d, d), mat), ("attn_q.bias", "normal", (d,), 0.02),
            ("attn_k.weight", "matrix", (d, d), mat), ("attn_k.bias", "normal", (d,), 0.02),
            ("attn_v.weight", "matrix", (d, d), mat), ("attn_v.bias", "normal", (d,), 0.02),
            ("attn_out.weight", "matrix", (d, d), mat), ("ffn_gate.weight", "matrix", (d, f), mat),
            ("ffn_up.weight", "matrix", (d, f), mat), ("ffn_down.weight", "matrix", (f, d), mat),
            ("ln1.weight", "ones", (d,), None), ("ln2.weight", "ones", (d,), None),
        ])
    t.ones("mm.a.local_norm.weight", (d,))
    t.matrix("mm.a.mlp.1.weight", (d * spec.local_group, h), dtype=mat)
    t.matrix("mm.a.mlp.2.weight", (h, n_embd_text), dtype=mat)


def _write_parakeet(t: _TensorSink, spec: AudioProjectorSpec, n_embd_text: int) -> None:
    """NVIDIA Parakeet's FastConformer (``models/parakeet.cpp``, tensors of ``clip.cpp`` PROJECTOR_TYPE_PARAKEET): the
    preprocessor's mel filterbank and window (``a.mel_filters``, ``a.window``: F32, read by clip.cpp's get_vector);
    conv2d, depthwise + pointwise conv2d twice (three stride-2 steps: subsampling 8), the output projection;
    conformer blocks (half-step FFN without biases, relative-position attention with u / v biases, GLU + depthwise
    conv with an unfolded batch norm: mean, variance, scale, shift; half-step FFN, layer norm); an RMS norm and a
    squared-ReLU MLP to the text width. Conv kernels F32 as the converter forces them (nemotron.py
    ``tensor_force_quant``; ggml_ssm_conv needs F32)."""
    d, f, c, h, f32 = spec.n_embd, spec.n_ff, spec.n_conv, spec.n_hidden, np.float32
    mat = AUDIO_WEIGHT_TYPES[spec.weights]
    n_fft_bins = PARAKEET_N_FFT // 2 + 1
    t.array("a.mel_filters",
            lambda: _rng(t.seed, "a.mel_filters").uniform(0.0, 0.02, size=(spec.n_mel, n_fft_bins)).astype(f32),
            (spec.n_mel, n_fft_bins), f32)
    t.array("a.window", lambda: np.hanning(PARAKEET_WINDOW).astype(f32), (PARAKEET_WINDOW,), f32)
    for i, ne in ((0, (3, 3, 1, c)), (2, (3, 3, 1, c)), (3, (1, 1, c, c)), (5, (3, 3, 1, c)), (6, (1, 1, c, c))):
        t.matrix(f"a.conv1d.{i}.weight", ne, dtype=f32)
        t.normal(f"a.conv1d.{i}.bias", (1, 1, c), 0.02)
    t.matrix("a.pre_encode.out.weight", (c * _stride2(spec.n_mel, 3), d), dtype=mat)
    t.normal("a.pre_encode.out.bias", (d,), 0.02)
    dh = d // spec.n_head
    t.blocks("a.blk.", spec.n_layer, [
        ("ffn_norm.weight", "ones", (d,), None), ("ffn_norm.bias", "normal", (d,), 0.02),
        ("ffn_up.weight", "matrix", (d, f), mat), ("ffn_down.weight", "matrix", (f, d), mat),
        ("ln1.weight", "ones", (d,), None), ("ln1.bias", "normal", (d,), 0.02),
        ("attn_q.weight", "matrix", (d, d), mat), ("attn_k.weight", "matrix", (d, d), mat),
        ("attn_v.weight", "matrix", (d, d), mat), ("attn_out.weight", "matrix", (d, d), mat),
        ("pos_bias_u", "normal", (dh, spec.n_head), 0.02), ("pos_bias_v", "normal", (dh, spec.n_head), 0.02),
        ("linear_pos.weight", "matrix", (d, d), mat),  # the sinusoidal input is the encoder's width here
        ("norm_conv.weight", "ones", (d,), None), ("norm_conv.bias", "normal", (d,), 0.02),
        ("conv_pw1.weight", "matrix", (d, 2 * d), mat),
        ("conv_dw.weight", "matrix", (spec.conv_kernel, d), f32),
        ("conv_norm.weight", "ones", (d,), None), ("conv_norm.bias", "normal", (d,), 0.02),
        ("conv_norm_mean", "normal", (d,), 0.02), ("conv_norm_var", "ones", (d,), None),
        ("conv_pw2.weight", "matrix", (d, d), mat),
        ("ffn_norm_1.weight", "ones", (d,), None), ("ffn_norm_1.bias", "normal", (d,), 0.02),
        ("ffn_up_1.weight", "matrix", (d, f), mat), ("ffn_down_1.weight", "matrix", (f, d), mat),
        ("ln2.weight", "ones", (d,), None), ("ln2.bias", "normal", (d,), 0.02),
    ])
    t.ones("mm.a.norm_pre.weight", (d,))
    t.matrix("mm.a.mlp.1.weight", (d, h), dtype=mat)  # no biases: clip.cpp loads none for parakeet
    t.matrix("mm.a.mlp.2.weight", (h, n_embd_text), dtype=mat)
    # clip.cpp's parakeet loader also requires mm.model.mlp.{0,1,3}.weight (clip.cpp:3482-3484), which the graph does
    # not read: in the published mmproj (vision + audio in one file) they are Nemotron Nano VL's vision projector
    t.ones("mm.model.mlp.0.weight", (d,))
    t.matrix("mm.model.mlp.1.weight", (d, h), dtype=mat)
    t.matrix("mm.model.mlp.3.weight", (h, n_embd_text), dtype=mat)


def _write_dots3note_a(t: _TensorSink, spec: AudioProjectorSpec, n_embd_text: int) -> None:
    """dots3-note's audio encoder and adapter (``models/dots3note.cpp``, tensors of ``clip.cpp``
    PROJECTOR_TYPE_DOTS3NOTE_A): three 3x3 stride-2 conv2d with biases (F32, as the converter forces them), the
    bias-free output projection, transformer layers run by clip.cpp's ``build_vit`` (RMS norms, RoPE on half of each
    head, SiLU-gated FFN: the converter splits the fused fc1 into gate and up and sets ``clip.use_silu``), then a
    layer norm and a GELU MLP (``mm.a.mlp.1`` / ``mm.a.mlp.3``). The published encoder's biases are not recorded
    here: the attention carries Whisper's (q, v, out), the FFN none; clip.cpp loads them all as optional."""
    d, f, c, h, f32 = spec.n_embd, spec.n_ff, spec.n_conv, spec.n_hidden, np.float32
    mat = AUDIO_WEIGHT_TYPES[spec.weights]
    for i, ne in ((1, (3, 3, 1, c)), (2, (3, 3, c, c)), (3, (3, 3, c, c))):
        t.matrix(f"a.conv2d.{i}.weight", ne, dtype=f32)
        t.normal(f"a.conv2d.{i}.bias", (c,), 0.02)
    t.matrix("a.conv_out.weight", (_stride2(spec.n_mel, 3) * c, d), dtype=f32)
    t.blocks("a.blk.", spec.n_layer, [
        ("ln1.weight", "ones", (d,), None),
        ("attn_q.weight", "matrix", (d, d), mat), ("attn_q.bias", "normal", (d,), 0.02),
        ("attn_k.weight", "matrix", (d, d), mat),
        ("attn_v.weight", "matrix", (d, d), mat), ("attn_v.bias", "normal", (d,), 0.02),
        ("attn_out.weight", "matrix", (d, d), mat), ("attn_out.bias", "normal", (d,), 0.02),
        ("ln2.weight", "ones", (d,), None),
        ("ffn_gate.weight", "matrix", (d, f), mat), ("ffn_up.weight", "matrix", (d, f), mat),
        ("ffn_down.weight", "matrix", (f, d), mat),
    ])
    t.ones("mm.a.norm_pre.weight", (d,))
    t.normal("mm.a.norm_pre.bias", (d,), 0.02)
    t.matrix("mm.a.mlp.1.weight", (d, h), dtype=mat)
    t.normal("mm.a.mlp.1.bias", (h,), 0.02)
    t.matrix("mm.a.mlp.3.weight", (h, n_embd_text), dtype=mat)
    t.normal("mm.a.mlp.3.bias", (n_embd_text,), 0.02)


def _write_gemma4ua(t: _TensorSink, spec: AudioProjectorSpec, n_embd_text: int) -> None:
    """Gemma 4 Unified's audio input (``models/gemma4ua.cpp``, tensors of ``clip.cpp`` PROJECTOR_TYPE_GEMMA4UA): no
    encoder; each 640-sample frame of the raw waveform is RMS-normed and projected to the text width by
    ``mm.a.input_projection``, the one tensor clip.cpp loads for it."""
    t.matrix("mm.a.input_projection.weight", (GEMMA4UA_FRAME, n_embd_text), dtype=AUDIO_WEIGHT_TYPES[spec.weights])


#: FFT size and window length of Parakeet's preprocessor (clip.cpp fixes them: 512 and 400 at 16 kHz, hop 160).
PARAKEET_N_FFT = 512
PARAKEET_WINDOW = 400


def write_audio_projector(path: str | pathlib.Path, spec: AudioProjectorSpec, n_embd_text: int, seed: int = 0,
                          progress=None) -> None:
    """Write a random-weight audio-projector GGUF (libmtmd ``clip`` file; conv kernels F16, the matrices
    ``spec.weights``, the rest F32).

    Parameters
    ----------
    path : str or pathlib.Path
        Output file (overwritten).
    spec : AudioProjectorSpec
    n_embd_text : int
        Embedding size of the text model it feeds (the projector's output width).
    seed : int
        Seed of the random weights.
    progress : callable, optional
        Called with ``(tensors written, tensors in all)`` after each tensor.
    """
    import gguf

    w = gguf.GGUFWriter(str(path), "clip")
    w.add_name(f"tiny-{spec.projector}")
    w.add_description("random-weight test audio encoder (audiokv-edge tiny_models)")
    w.add_file_type(1)  # conv1d kernels are F16, as in converted Whisper towers
    w.add_bool("clip.has_audio_encoder", True)
    w.add_bool("clip.has_vision_encoder", False)
    w.add_string("clip.projector_type", spec.projector)
    w.add_uint32("clip.audio.embedding_length", spec.n_embd)
    w.add_uint32("clip.audio.feed_forward_length", spec.n_ff)
    w.add_uint32("clip.audio.block_count", spec.n_layer)
    w.add_uint32("clip.audio.projection_dim", n_embd_text)
    w.add_uint32("clip.audio.attention.head_count", spec.n_head)
    w.add_float32("clip.audio.attention.layer_norm_epsilon", 1e-5)
    w.add_uint32("clip.audio.num_mel_bins", spec.n_mel)
    if spec.stack_factor:
        w.add_uint32("clip.audio.projector.stack_factor", spec.stack_factor)
    if spec.projector == "granite_speech":
        w.add_uint32("clip.audio.chunk_size", spec.context_size)
        w.add_uint32("clip.audio.conv_kernel_size", spec.conv_kernel)
        w.add_uint32("clip.audio.max_pos_emb", spec.max_pos_emb)
        w.add_uint32("clip.audio.projector.window_size", spec.proj_window)
        w.add_uint32("clip.audio.projector.downsample_rate", spec.proj_downsample)
        w.add_uint32("clip.audio.projector.head_count", spec.proj_n_head)
    if spec.projector == "parakeet":
        w.add_uint32("clip.audio.subsampling_factor", 8)  # clip.cpp asserts 8: three stride-2 conv steps
        w.add_uint32("clip.audio.conv_kernel_size", spec.conv_kernel)
    if spec.projector == "dots3note_a":
        w.add_bool("clip.use_silu", True)  # the published file sets it for its vision tower; the audio FFN reads it too
    if spec.projector == "mimo_audio":
        w.add_uint32("clip.audio.rvq.num_quantizers", spec.rvq_quantizers)
        w.add_array("clip.audio.rvq.codebook_size", [spec.rvq_bins] * spec.rvq_quantizers)
        w.add_uint32("clip.audio.window_size", spec.attn_window)
        # full attention in the last layer, windowed in the others (as the tokenizer's pattern ends)
        w.add_array("clip.audio.wa_pattern_mode", [0] * (spec.n_layer - 1) + [-1])
        w.add_uint32("clip.audio.local_block_count", spec.local_layers)
        w.add_uint32("clip.audio.local_group_size", spec.local_group)

    t = _TensorSink(w, seed)
    d, mat = spec.n_embd, AUDIO_WEIGHT_TYPES[spec.weights]  # mat: the projector matrices' type
    own_writer = {"gemma4a": _write_gemma4a, "lfm2a": _write_lfm2a, "granite_speech": _write_granite_speech,
                  "mimo_audio": _write_mimo_audio, "parakeet": _write_parakeet,
                  "gemma4ua": _write_gemma4ua, "dots3note_a": _write_dots3note_a}
    if spec.projector in own_writer:
        own_writer[spec.projector](t, spec, n_embd_text)
        t.write_file(progress)
        return
    if spec.projector == "qwen3a":  # models/qwen3a.cpp: 3 x conv2d(3x3, stride 2) on [100 frames, n_mel] chunks
        c = spec.n_conv
        t.matrix("a.conv2d.1.weight", (3, 3, 1, c), dtype=np.float16)
        t.normal("a.conv2d.1.bias", (c,), 0.02)
        t.matrix("a.conv2d.2.weight", (3, 3, c, c), dtype=np.float16)
        t.normal("a.conv2d.2.bias", (c,), 0.02)
        t.matrix("a.conv2d.3.weight", (3, 3, c, c), dtype=np.float16)
        t.normal("a.conv2d.3.bias", (c,), 0.02)
        t.matrix("a.conv_out.weight", (spec.n_mel // 8 * c, d))
        t.normal("a.position_embd.weight", (d, 64), 0.1)
    else:  # models/whisper-enc.cpp
        t.matrix("a.conv1d.1.weight", (3, spec.n_mel, d), dtype=np.float16)
        t.normal("a.conv1d.1.bias", (1, d), 0.02)
        t.matrix("a.conv1d.2.weight", (3, d, d), dtype=np.float16)
        t.normal("a.conv1d.2.bias", (1, d), 0.02)
        t.normal("a.position_embd.weight", (d, WHISPER_POSITIONS), 0.1)
    t.blocks("a.blk.", spec.n_layer, _audio_block_layout(spec))
    t.ones("a.post_ln.weight", (d,))
    t.normal("a.post_ln.bias", (d,), 0.02)
    if spec.projector in ("qwen2a", "qwen2.5o"):
        t.matrix("mm.a.fc.weight", (d, n_embd_text), dtype=mat)
        t.normal("mm.a.fc.bias", (n_embd_text,), 0.02)
    elif spec.projector == "glma":  # norm, stack, GELU MLP, between learned begin / end embeddings
        h, ds = spec.n_hidden, d * spec.stack_factor
        t.ones("mm.a.norm_pre.weight", (d,))
        t.normal("mm.a.norm_pre.bias", (d,), 0.02)
        t.matrix("mm.a.mlp.1.weight", (ds, h))
        t.normal("mm.a.mlp.1.bias", (h,), 0.02)
        t.matrix("mm.a.mlp.2.weight", (h, n_embd_text))
        t.normal("mm.a.mlp.2.bias", (n_embd_text,), 0.02)
        t.normal("v.boi", (n_embd_text, 1), 0.05)
        t.normal("v.eoi", (n_embd_text, 1), 0.05)
    elif spec.projector == "meralion":  # stack, norm, linear + SiLU, GLU, out
        h, ds = spec.n_hidden, d * spec.stack_factor
        t.ones("mm.a.norm_pre.weight", (ds,))
        t.normal("mm.a.norm_pre.bias", (ds,), 0.02)
        for i, (n_in, n_out) in enumerate(((ds, h), (h, h), (h, h), (h, n_embd_text))):
            t.matrix(f"mm.a.mlp.{i}.weight", (n_in, n_out))
            t.normal(f"mm.a.mlp.{i}.bias", (n_out,), 0.02)
    elif spec.projector == "musicflamingo":
        t.matrix("mm.a.mlp.1.weight", (d, spec.n_hidden))
        t.normal("mm.a.mlp.1.bias", (spec.n_hidden,), 0.02)
        t.matrix("mm.a.mlp.2.weight", (spec.n_hidden, n_embd_text))
        t.normal("mm.a.mlp.2.bias", (n_embd_text,), 0.02)
    elif spec.projector == "qwen3a":
        t.matrix("mm.a.mlp.1.weight", (d, spec.n_hidden), dtype=mat)
        t.normal("mm.a.mlp.1.bias", (spec.n_hidden,), 0.02)
        t.matrix("mm.a.mlp.2.weight", (spec.n_hidden, n_embd_text), dtype=mat)
        t.normal("mm.a.mlp.2.bias", (n_embd_text,), 0.02)
    elif spec.projector == "ultravox":
        ds = d * spec.stack_factor
        t.ones("mm.a.norm_pre.weight", (ds,))
        t.matrix("mm.a.mlp.1.weight", (ds, 2 * spec.n_hidden), dtype=mat)
        t.ones("mm.a.norm_mid.weight", (spec.n_hidden,))
        t.matrix("mm.a.mlp.2.weight", (spec.n_hidden, n_embd_text), dtype=mat)
    else:  # voxtral
        ds = d * spec.stack_factor
        t.matrix("mm.a.mlp.1.weight", (ds, spec.n_hidden), dtype=mat)
        t.matrix("mm.a.mlp.2.weight", (spec.n_hidden, n_embd_text), dtype=mat)
    t.write_file(progress)


def _write_pair(directory: pathlib.Path, pair: TinyPair, seed: int, *, audio: bool = True, keep_existing: bool = False,
                progress=None) -> tuple[pathlib.Path, pathlib.Path]:
    """Write ``directory/model.gguf`` (and ``mmproj.gguf``), each through a temporary file renamed when complete;
    ``keep_existing``: a file already there is not written again."""
    directory.mkdir(parents=True, exist_ok=True)
    model_path = directory / "model.gguf"
    mmproj_path = directory / "mmproj.gguf"
    files = [(model_path, lambda p: write_text_model(p, pair.text, seed, progress))]
    if audio:
        files.append((mmproj_path, lambda p: write_audio_projector(p, pair.audio, pair.text.n_embd, seed, progress)))
    for final, writer in files:
        if keep_existing and final.exists():
            continue
        logger.info("writing %s", final)
        partial = final.with_name(final.name + ".partial")
        writer(partial)
        partial.replace(final)  # never leave a half-written GGUF under the final name
    return model_path, mmproj_path


def write_tiny_pair(out_dir: str | pathlib.Path, name: str, seed: int = 0) -> tuple[pathlib.Path, pathlib.Path]:
    """Write ``out_dir/<name>/model.gguf`` and ``out_dir/<name>/mmproj.gguf``.

    Parameters
    ----------
    out_dir : str or pathlib.Path
        Parent directory; created when missing.
    name : str
        A key of :data:`TINY_PAIRS`, e.g. ``"qwen2-qwen2a"``.
    seed : int
        Seed of the random weights; the same seed gives byte-identical files.

    Returns
    -------
    tuple of pathlib.Path
        ``(model_path, mmproj_path)``.

    Raises
    ------
    ValueError
        Unknown ``name``.
    """
    if name not in TINY_PAIRS:
        raise ValueError(f"unknown tiny pair {name!r}; choose from {', '.join(TINY_PAIRS)}")
    paths = _write_pair(pathlib.Path(out_dir) / name, TINY_PAIRS[name], seed)
    logger.info("wrote tiny pair %s to %s", name, paths[0].parent)
    return paths


def real_shape_pair(cache_dir: str | pathlib.Path, name: str, *, audio: bool = True, seed: int = 0,
                    progress=None) -> tuple[pathlib.Path, pathlib.Path | None]:
    """``cache_dir/<name>/model.gguf`` (and ``mmproj.gguf``) of a real model's shape, written unless already there.

    Parameters
    ----------
    cache_dir : str or pathlib.Path
        Parent directory; created when missing (the files take gigabytes: 4.4 GB for qwen2.5-omni-7b's text model,
        1.3 GB for a Whisper-large projector).
    name : str
        A key of :data:`REAL_SHAPES`.
    audio : bool
        Also the audio projector (``False``: the text model alone, the second path is None).
    seed : int
        Seed of the random weights.
    progress : callable, optional
        Called with ``(tensors written, tensors in all)`` while a file is written.

    Raises
    ------
    ValueError
        Unknown ``name``.
    """
    if name not in REAL_SHAPES:
        raise ValueError(f"unknown model shape {name!r}; choose from {', '.join(REAL_SHAPES)}")
    model_path, mmproj_path = _write_pair(pathlib.Path(cache_dir) / name, REAL_SHAPES[name], seed, audio=audio,
                                          keep_existing=True, progress=progress)
    return model_path, (mmproj_path if audio else None)


def write_all(out_dir: str | pathlib.Path, seed: int = 0,
              names: list[str] | None = None) -> dict[str, tuple[pathlib.Path, pathlib.Path]]:
    """Write every tiny pair (or those in ``names``) under ``out_dir``.

    Returns
    -------
    dict
        ``name -> (model_path, mmproj_path)``.
    """
    return {n: write_tiny_pair(out_dir, n, seed) for n in (names or list(TINY_PAIRS))}
