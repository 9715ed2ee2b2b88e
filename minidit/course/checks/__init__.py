"""Automatic checks, levelled hints and question answers for the exercises, one module per chapter of book.toml.

``core`` holds the machinery (``check``, ``hint``, ``check_answer``, the registries); each chapter module registers
its checks and questions on import: ``interpolants`` (exercise 01), ``predictions`` (02, 08), ``time_samplers`` (03),
``samplers`` (04), ``dit`` (05, 06, 09), ``flag_dit`` (07), ``text_conditioning`` (10, 13), ``mmdit`` (12),
``kv_compression`` (11), ``llm_refiner`` (14), ``frames`` (15), ``discrete_time`` (16), ``scaling`` (17) and
``real_images`` (18). A new chapter adds one module and one import here.
"""
# Imported in the order of book.toml's chapters, so that lists of valid names read in course order.
from minidit.course.checks import interpolants, predictions, time_samplers, samplers, dit, flag_dit  # noqa: F401, I001
from minidit.course.checks import text_conditioning, mmdit, kv_compression  # noqa: F401, I001
from minidit.course.checks import llm_refiner  # noqa: F401, I001
from minidit.course.checks import frames  # noqa: F401, I001
from minidit.course.checks import discrete_time  # noqa: F401, I001
from minidit.course.checks import scaling  # noqa: F401, I001
from minidit.course.checks import real_images  # noqa: F401, I001
from minidit.course.checks.core import (
    CHECKS,
    QUESTIONS,
    Case,
    Check,
    CheckResult,
    Question,
    check,
    check_answer,
    hint,
    register,
    register_question,
)
from minidit.course.checks.samplers import euler_maruyama_step

__all__ = ["CHECKS", "QUESTIONS", "Case", "Check", "CheckResult", "Question", "check", "check_answer", "euler_maruyama_step",
           "hint", "register", "register_question"]
