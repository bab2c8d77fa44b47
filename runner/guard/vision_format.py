"""The Llama Guard 3 Vision prompt: the text guard's instruction in the released Vision chat template.

Llama Guard 3-11B-Vision (arXiv 2411.10414) reads the same instruction as the text guards (:mod:`runner.guard.format`:
task line, S1–S13, conversation, two-line answer rule) with one image. Its released chat template
(``tests/fixtures/llama_guard_vision/SOURCE.md``) renders, for a user turn ``[text, image]``::

    <|begin_of_text|><|start_header_id|>user<|end_header_id|>\\n\\n<|image|> Task: Check if there is unsafe ...

i.e. the image token comes first, before all of the guard's text and so before the user's text, whatever the
order of the content parts, followed by one space. Two more published details differ from the 1B text template:
the category block opens ``<BEGIN UNSAFECONTENT CATEGORIES>`` (no space; the closing tag keeps it), and the rest
is the 3-1B frame (`` <|eot_id|><|start_header_id|>assistant<|end_header_id|>``). As for the text guards, the
prompt returned here ends with the ``"\\n\\n"`` the model writes after the assistant header, so the next token is
the verdict and P(unsafe) is read there (:func:`runner.guard.format.unsafe_probability`).

Response classification (a user turn with the image and an ``Agent`` answer) is not among the published
renderings; it is reconstructed as the same frame with the text template's ``Agent`` task and conversation.
Without an image (the text-only baseline) the image token and its space are left out.
"""

from __future__ import annotations

from collections.abc import Sequence

from runner.guard.format import ANSWER_PREFIX, CATEGORIES_1B, guard_instruction

IMAGE_TOKEN = "<|image|>"
PREFIX = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
SUFFIX = " <|eot_id|><|start_header_id|>assistant<|end_header_id|>"
# Special tokens of the Llama 3.2 Vision tokenizer that the prompt uses; tiny tokenizers add them as single tokens.
SPECIAL_TOKENS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", IMAGE_TOKEN,
                  "<|python_tag|>"]
_CATEGORY_OPEN = "<BEGIN UNSAFE CONTENT CATEGORIES>"
_CATEGORY_OPEN_VISION = "<BEGIN UNSAFECONTENT CATEGORIES>"  # as the released Vision template renders it


def vision_instruction(prompt: str, response: str | None = None, categories: Sequence[str] = CATEGORIES_1B) -> str:
    """The text guard's instruction with the Vision template's category opening tag."""
    return guard_instruction(prompt, response, categories).replace(_CATEGORY_OPEN, _CATEGORY_OPEN_VISION, 1)


def published_vision_template(prompt: str, response: str | None = None, categories: Sequence[str] = CATEGORIES_1B,
                              image: bool = True) -> str:
    """What the released Vision chat template renders (it ends at the assistant header)."""
    head = f"{IMAGE_TOKEN} " if image else ""
    return f"{PREFIX}{head}{vision_instruction(prompt, response, categories)}{SUFFIX}"


def vision_guard_prompt(prompt: str, response: str | None = None, categories: Sequence[str] = CATEGORIES_1B,
                        image: bool = True) -> str:
    """The classification prompt up to the verdict position: the published template plus ``"\\n\\n"``.
    ``response`` None: prompt classification; ``image`` False: the same prompt without the image token."""
    return published_vision_template(prompt, response, categories, image) + ANSWER_PREFIX
