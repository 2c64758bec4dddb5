"""Saved students through `transformers`' Auto classes: `AutoModelForCausalLM.from_pretrained(student_dir)`.

A student's `config.json` names its own model type, `hydrahead_<family>` (e.g. `hydrahead_qwen3`), so
that `transformers` cannot mistake it for its teacher's family: without `hydrahead_lit` imported, the
Auto classes refuse the directory (an unknown model type) instead of building the teacher's
architecture with the hybrid attention silently dropped. `import hydrahead_lit` registers, for every
supported family, the config class (`HydraHead<Family>Config`: the family's config under that model
type) with `AutoConfig` and the student class (`HydraHead<Family>ForCausalLM`, the class
`hh.load_student` builds; the family's modeling code is imported on first use) with
`AutoModelForCausalLM`, so both ways load the same model.

Inside a student the config still answers `config.model_type` with the family's own name (an instance
attribute), because `transformers` and the hybrid attention use it to find the family's code; only the
class attribute, which `to_dict` writes, carries the student's type.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

STUDENT_TYPE_PREFIX = "hydrahead_"


def student_model_type(base_model_type: str) -> str:
    return f"{STUDENT_TYPE_PREFIX}{base_model_type}"


@cache
def student_config_class(base_config: type) -> type:
    """`HydraHead<Family>Config`: `base_config` saved under the model type `hydrahead_<family>`."""
    if base_config.model_type.startswith(STUDENT_TYPE_PREFIX):
        return base_config
    family = base_config.model_type

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.pop("model_type", None)
        base_config.__init__(self, *args, **kwargs)
        self.__dict__["model_type"] = family  # what the family's code looks up; to_dict writes the class's

    def get_config_dict(cls: type, *args: Any, **kwargs: Any) -> tuple[dict, dict]:
        config_dict, kwargs = super(config_cls, cls).get_config_dict(*args, **kwargs)
        if config_dict.get("model_type") == family and "hydrahead" in config_dict:
            config_dict["model_type"] = cls.model_type  # a student exported before it had its own type
        return config_dict, kwargs

    config_cls = type(
        f"HydraHead{base_config.__name__}",
        (base_config,),
        {"model_type": student_model_type(family), "__init__": __init__, "__module__": __name__,
         "get_config_dict": classmethod(get_config_dict)},
    )  # fmt: skip
    return config_cls


def adopt_student_config(model: Any) -> None:
    """Give a model converted in place (its config still the teacher family's) the student config class."""
    cls = student_config_class(type(model.config))
    if type(model.config) is not cls:
        model.config.__class__ = cls  # a subclass that only changes the saved model type
        model.config.__dict__["model_type"] = cls.__mro__[1].model_type


def _deferred_model_class(causal_lm_name: str, config_cls: type, student_class: Callable[[type], type]) -> type:
    """Stands for `HydraHead<Family>ForCausalLM` in `AutoModelForCausalLM`'s mapping: the family's
    modeling code (which imports Triton) is imported on first use, not when `hydrahead_lit` is."""

    def real() -> type:
        import transformers

        return student_class(getattr(transformers, causal_lm_name))

    class Deferred:
        config_class = config_cls

        @classmethod
        def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
            return real().from_pretrained(*args, **kwargs)

        @classmethod
        def _from_config(cls, config: Any, **kwargs: Any) -> Any:
            return real()._from_config(config, **kwargs)

    Deferred.__name__ = Deferred.__qualname__ = f"HydraHead{causal_lm_name}"
    return Deferred


def register_auto_classes(student_class: Callable[[type], type]) -> None:
    """Register every supported family's student config with `AutoConfig` and its student model
    (`student_class(<family's causal LM class>)`, built on first use) with `AutoModelForCausalLM`
    (idempotent). The package's `__init__` calls it on import."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from hydrahead_lit.modeling.arch import SUPPORTED_MODEL_TYPES

    for family in SUPPORTED_MODEL_TYPES:
        name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(family)
        if name is None or family not in CONFIG_MAPPING:  # an older transformers without this family
            continue
        config_cls = student_config_class(CONFIG_MAPPING[family])
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
        AutoModelForCausalLM.register(config_cls, _deferred_model_class(name, config_cls, student_class), exist_ok=True)
