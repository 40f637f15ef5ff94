"""Project pipelines."""

from __future__ import annotations

from kedro.pipeline import Pipeline

from clip_lora_pipeline import project_config
from clip_lora_pipeline.pipelines.data import pipeline as data
from clip_lora_pipeline.pipelines.linear_probe import pipeline as linear_probe
from clip_lora_pipeline.pipelines.lora import pipeline as lora
from clip_lora_pipeline.pipelines.predict import pipeline as predict
from clip_lora_pipeline.pipelines.reporting import pipeline as reporting
from clip_lora_pipeline.pipelines.zero_shot import pipeline as zero_shot


def register_pipelines() -> dict[str, Pipeline]:
    """One namespace per configured dataset, e.g. ``flowers102.split``.

    Each pipeline includes the steps it depends on, so ``kedro run --pipeline zero_shot``
    works from a fresh checkout; ``--only-missing-outputs`` skips finished ones.
    """
    params = project_config.parameters()
    names = project_config.dataset_names(params)
    prompt_sets = project_config.prompt_set_names(params)
    methods = project_config.adaptation_method_names(params)
    head_prompt_set = project_config.text_init_head_prompt_set(params)
    probes = project_config.probe_method_names(params)
    data_pipeline = sum((data.for_dataset(n) for n in names), Pipeline([]))
    zero_shot_pipeline = data_pipeline + sum(
        (zero_shot.for_dataset(n, prompt_sets) for n in names), Pipeline([])
    )
    probe_pipeline = data_pipeline + sum(
        (zero_shot.embeddings_for_dataset(n) + linear_probe.for_dataset(n, head_prompt_set)
         for n in names),
        Pipeline([]),
    )
    if head_prompt_set is not None:
        probe_pipeline += sum(
            (zero_shot.text_classifier_for_dataset(n, head_prompt_set) for n in names),
            Pipeline([]),
        )
    lora_pipeline = data_pipeline + sum(
        (lora.for_dataset(n, methods) for n in names), Pipeline([])
    )
    reporting_pipeline = sum(
        (reporting.for_dataset(n, prompt_sets, probes, methods) for n in names), Pipeline([])
    ) + reporting.create_summary_pipeline(names)
    return {
        "__default__": zero_shot_pipeline + probe_pipeline + lora_pipeline + reporting_pipeline,
        "reporting": reporting_pipeline,
        "lora": lora_pipeline,
        # Not in __default__: it needs the user's images and a trained model.
        "predict": predict.for_parameters(params, names, prompt_sets, probes, methods),
        "data": data_pipeline,
        "zero_shot": zero_shot_pipeline,
        "linear_probe": probe_pipeline,
    }
