"""A LiteLLM callback that does nothing: the baseline of bench/proxy_ab.py's `null` mode.

With any callback registered LiteLLM builds its standard_logging_object and schedules the
logging tasks; this one then returns at once. Comparing the real logger against it isolates
what litellm_pglog itself costs from what LiteLLM costs for having a callback at all."""

from litellm.integrations.custom_logger import CustomLogger


class NullCallback(CustomLogger):
    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):  # noqa: ANN001
        return None

    async def async_log_failure_event(self, kwargs, response_obj, start_time, end_time):  # noqa: ANN001
        return None


instance = NullCallback()
