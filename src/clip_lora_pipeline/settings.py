"""Project settings; see https://docs.kedro.org/en/stable/configure/configuration_basics/"""

from clip_lora_pipeline import logs
from clip_lora_pipeline.core.model_id import slug_resolver
from clip_lora_pipeline.hooks import ProjectHooks
from clip_lora_pipeline.project_config import ProjectConfigLoader
from clip_lora_pipeline.summary import RunSummary
from clip_lora_pipeline.tracking import MlflowTracking

# Kedro imports this module as it loads the project: before the plugins' commands, which
# warn as they are imported, and after it has configured logging (conf/logging.yml).
logs.setup()

# Called in the reverse order for each hook: RunSummary's lines go into the log file
# before RunLogHooks closes it, which opens it before ProjectHooks may stop the run.
HOOKS = (ProjectHooks(), MlflowTracking(), logs.RunLogHooks(), RunSummary())

CONFIG_LOADER_CLASS = ProjectConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # ${model_slug:name,pretrained,checkpoint} puts the model's identity in feature paths.
    "custom_resolvers": {"model_slug": slug_resolver},
}
