"""The entry point lmms-eval reads (group `lmms_eval.models`): which class answers `--model lmm`."""


def manifest():
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="lmm", simple_class_path="lmm.lmms_eval.model.LMMForLmmsEval")
