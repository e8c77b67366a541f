"""Every tool-call family, one definition each (see ../family.py for what a definition holds).

    passthrough.py  no tool syntax            hermes.py      qwen2_5, qwen3, qwen3_coder
    qwen_agent.py   qwen1_5_or_2              glm.py         chatglm2, chatglm3, glm4
    glm_moe.py      glm45, glm47              deepseek.py    deepseek_v3, deepseek_v31, deepseek_v32
    llama.py        llama3                    pythonic.py    pythonic, llama4_pythonic
    mistral.py      mistral                   kimi.py        kimi_k2
    minimax.py      minimax_m2                harmony.py     gpt_oss
    seed_oss.py     seed_oss
"""
from ..family import Family
from .deepseek import (DEEPSEEK_V3, DEEPSEEK_V31, DEEPSEEK_V32, DS_CALL_BEGIN, DS_CALL_END, DS_CALLS_BEGIN,
                       DS_CALLS_END, DS_SEP, DSML_CALLS_BEGIN, DSML_CALLS_END, DSML_INVOKE, DSML_INVOKE_END, DSML_PARAM,
                       DSML_PARAM_END)
from .glm import CHATGLM2, CHATGLM3, GLM4
from .glm_moe import GLM45, GLM47
from .harmony import GPT_OSS
from .hermes import QWEN2_5, QWEN3, QWEN3_CODER
from .kimi import KIMI_K2
from .llama import LLAMA3
from .minimax import MINIMAX_M2
from .mistral import MISTRAL
from .passthrough import PASSTHROUGH
from .pythonic import LLAMA4_PYTHONIC, PYTHONIC
from .qwen_agent import QWEN1_5_OR_2
from .seed_oss import SEED_OSS

FamilySpec = Family   # the name this type had before families became objects

FAMILIES: tuple[Family, ...] = (
    PASSTHROUGH, CHATGLM2, CHATGLM3, GLM4, DEEPSEEK_V3, DEEPSEEK_V31, DEEPSEEK_V32, LLAMA3, QWEN1_5_OR_2, QWEN2_5,
    QWEN3, QWEN3_CODER, MISTRAL, KIMI_K2, GLM45, GLM47, MINIMAX_M2, GPT_OSS, SEED_OSS, PYTHONIC, LLAMA4_PYTHONIC,
)
BY_FAMILY: dict[str, Family] = {f.family: f for f in FAMILIES}

__all__ = ["BY_FAMILY", "FAMILIES", "Family", "FamilySpec", "DS_CALL_BEGIN", "DS_CALL_END", "DS_CALLS_BEGIN",
           "DS_CALLS_END", "DS_SEP", "DSML_CALLS_BEGIN", "DSML_CALLS_END", "DSML_INVOKE", "DSML_INVOKE_END",
           "DSML_PARAM", "DSML_PARAM_END"]
