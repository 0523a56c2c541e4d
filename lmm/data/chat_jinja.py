"""lmm's chat templates written as Jinja chat templates, for tokenizers and processors of other tools.

An exported checkpoint (transformers' Llava folder, lmm.model.hf_llava_export) carries a
`chat_template` that renders exactly the string lmm's own template renders (`ChatTemplate` /
`TurnTemplate` -> `render_text`), so `processor.apply_chat_template(messages)` then
`processor(text=..., images=...)` gives the token ids lmm trains and answers on.

Messages follow transformers' convention: `{"role": "user"|"assistant"|"system", "content": str or
[{"type": "image"}, {"type": "text", "text": ...}, ...]}`. A list's images become lmm's placeholder
(`<image>` then a newline, each), before its text, as lmm's records are normalised ("front"). A
leading system message replaces the template's own system prompt.

The BOS token: lmm puts it first when the template asks for one. A tokenizer that adds it by itself
(`add_special_tokens=True`, which `processor(text=...)` uses) must not see it in the text too, so the
Jinja text holds `bos_token` only where the tokenizer does not add one (`tokenizer_adds_bos`).
"""
from __future__ import annotations

import json

from lmm.data.templates import IMAGE_PLACEHOLDER, ChatTemplate, TurnTemplate


def _lit(text: str) -> str:
    """A Jinja string literal (JSON escaping is valid Jinja: quotes, backslashes, newlines)."""
    return json.dumps(text)


def _around(fmt: str, field: str) -> tuple[str, str]:
    """("USER: ", " ASSISTANT:") of "USER: {content} ASSISTANT:"."""
    marker = "{" + field + "}"
    if fmt.count(marker) != 1:
        raise ValueError(f"template format {fmt!r} must hold {marker} exactly once")
    before, after = fmt.split(marker)
    return before, after


# Shared head: the system text (a leading system message overrides the default) and a macro that
# turns a message's content (a string, or transformers' list of typed parts) into lmm's text.
_HEAD = """{%- macro text_of(content) -%}
{%- if content is string -%}{{ content }}
{%- else -%}{%- for part in content if part['type'] == 'image' -%}{{ IMAGE }}{%- endfor -%}
{%- for part in content if part['type'] == 'text' -%}{{ part['text'] }}{%- endfor -%}
{%- endif -%}
{%- endmacro -%}
{%- set ns = namespace(system=SYSTEM, start=0) -%}
{%- if messages and messages[0]['role'] == 'system' -%}
{%- set ns.system = text_of(messages[0]['content']) -%}{%- set ns.start = 1 -%}
{%- endif -%}
"""


IMAGE_TEXT = IMAGE_PLACEHOLDER + "\n"  # what lmm's records hold for an image ("front" placement)


def _head(system: str, image_text: str) -> str:
    return _HEAD.replace("IMAGE", _lit(image_text)).replace("SYSTEM", _lit(system))


def chat_template_jinja(template, tokenizer_adds_bos: bool, image_text: str = IMAGE_TEXT) -> str:
    """The Jinja chat template rendering what `template` renders (see the module docstring).
    `image_text`: what an image part becomes (an exporter may need another spelling for the text
    after the image token to tokenise as lmm's chunked encoding does)."""
    if isinstance(template, ChatTemplate):
        return _chat(template, tokenizer_adds_bos, image_text)
    if isinstance(template, TurnTemplate):
        return _turns(template, tokenizer_adds_bos, image_text)
    raise ValueError(f"no Jinja form for {type(template).__name__}; valid: ChatTemplate, TurnTemplate "
                     f"(the pretrain stage's plain caption format has no chat turns)")


def _bos(wanted: bool, tokenizer_adds_bos: bool) -> str:
    return "{{- bos_token -}}" if wanted and not tokenizer_adds_bos else ""


def _chat(t: ChatTemplate, adds_bos: bool, image_text: str) -> str:
    sys_pre, sys_post = _around(t.system_format, "system")
    user_pre, user_post = _around(t.user_format, "content")
    first_pre, first_post = _around(t.first_user_format or t.user_format, "content")
    ans_pre, ans_post = _around(t.answer_format, "content")
    eos = "{{- eos_token -}}" if t.answer_end == "eos" else ""
    turn_bos = "{{- bos_token -}}" if t.bos == "each_turn" else ""
    return _head(t.system, image_text) + _bos(t.bos in ("once", "each_turn"), adds_bos) + f"""
{{%- if ns.system -%}}{{{{- {_lit(sys_pre)} + ns.system + {_lit(sys_post)} -}}}}{{%- endif -%}}
{{%- for message in messages[ns.start:] -%}}
{{%- set content = text_of(message['content']) -%}}
{{%- if message['role'] == 'user' -%}}
{{%- if not loop.first -%}}{turn_bos}{{%- endif -%}}
{{%- if loop.first and ns.system -%}}{{{{- {_lit(first_pre)} + content + {_lit(first_post)} -}}}}
{{%- else -%}}{{{{- {_lit(user_pre)} + content + {_lit(user_post)} -}}}}{{%- endif -%}}
{{%- elif message['role'] == 'assistant' -%}}
{{{{- {_lit(ans_pre)} + content + {_lit(ans_post)} -}}}}{eos}
{{%- endif -%}}
{{%- endfor -%}}"""


def _turns(t: TurnTemplate, adds_bos: bool, image_text: str) -> str:
    strip = " | trim" if t.trim else ""
    system_turn = "" if t.system_role is None else (
        f"{{{{- {_lit(t.turn_start + t.system_role + chr(10))} + (ns.system{strip}) + {_lit(t.turn_end + chr(10))} -}}}}")
    prefix = "" if t.system_role is not None else "{%- set prefix = ns.system + '\\n\\n' -%}"
    return _head(t.system, image_text) + _bos(t.bos == "once", adds_bos) + f"""
{{%- set prefix = '' -%}}
{{%- if ns.system -%}}{system_turn}{prefix}{{%- endif -%}}
{{%- for message in messages[ns.start:] -%}}
{{%- set content = text_of(message['content']){strip} -%}}
{{%- if message['role'] == 'user' -%}}
{{{{- {_lit(t.turn_start + t.user_role + chr(10))} + (prefix if loop.first else '') + content + {_lit(t.turn_end + chr(10) + t.turn_start + t.assistant_role + chr(10))} -}}}}
{{%- elif message['role'] == 'assistant' -%}}
{{{{- content + {_lit(t.turn_end + chr(10))} -}}}}
{{%- endif -%}}
{{%- endfor -%}}"""
