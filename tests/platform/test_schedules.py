"""Which DAGs `stack up` unpauses (rakuten_mlops.localstack.schedules)."""

from __future__ import annotations

from rakuten_mlops.localstack.schedules import dags_to_unpause


def test_stack_up_schedules_data_quality_and_ml_pipeline_only_with_the_trigger(settings):
    def unpaused(**changes) -> list[str]:
        return dags_to_unpause(settings.model_copy(update=changes))

    assert unpaused(stack_schedule_dags=True, quality_trigger_retrain=False) == ["data_quality"]
    assert unpaused(stack_schedule_dags=True, quality_trigger_retrain=True) == [
        "data_quality", "ml_pipeline"]
    assert unpaused(stack_schedule_dags=False, quality_trigger_retrain=True) == []
