"""Project settings; see https://docs.kedro.org/en/stable/configure/configuration_basics/"""

from clip_lora_pipeline.core.model_id import slug_resolver
from clip_lora_pipeline.hooks import ProjectHooks
from clip_lora_pipeline.project_config import ProjectConfigLoader
from clip_lora_pipeline.tracking import MlflowTracking

HOOKS = (ProjectHooks(), MlflowTracking())

CONFIG_LOADER_CLASS = ProjectConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # ${model_slug:name,pretrained,checkpoint} puts the model's identity in feature paths.
    "custom_resolvers": {"model_slug": slug_resolver},
}
