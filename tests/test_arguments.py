"""Operator and sensor arguments, with a fake hook: what each form of an argument means once
rendered, without HTTP or a metadata database."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred
from leap_guide import guide_example

import airflow_provider_leap.hooks.leap as hook_module
from airflow_provider_leap.config import LeapConfig
from airflow_provider_leap.hooks.leap import LeapException
from airflow_provider_leap.models import ConnectRecord, connect_record_from_mapping
from airflow_provider_leap.operators.triage import TriageOperator
from airflow_provider_leap.sensors.connect import ConnectStatusSensor
from airflow_provider_leap.triage import BUCKETS
from airflow_provider_leap.watch import evaluate

UTC = timezone.utc


def leap_record(ref_id: str, status: str) -> ConnectRecord:
    return connect_record_from_mapping(
        {
            **guide_example(),
            "id": f"CAISO_x_{ref_id}",
            "ref_id": ref_id,
            "connection_status": status,
        }
    )


class FakeHook:
    """Stands in for ``LeapHook``: answers from ``records``, remembers how it was called."""

    records: list[ConnectRecord] = []
    made: list[FakeHook] = []
    config = LeapConfig(api_key="k:k")  # production

    def __init__(self, leap_conn_id: str = "leap_default") -> None:
        self.leap_conn_id = leap_conn_id
        self.calls: list[dict[str, Any]] = []
        FakeHook.made.append(self)

    def iter_connect_records(self, **filters: Any) -> Any:
        self.calls.append(filters)
        return iter(self.records)

    def check_ref_ids(self, ids: list[str], targets: list[str], fails: list[str]) -> Any:
        self.calls.append({"ref_ids": ids, "targets": targets, "fails": fails})
        return evaluate(self.records, ids, targets, fails)


@pytest.fixture
def fake_hook(monkeypatch: pytest.MonkeyPatch) -> type[FakeHook]:
    monkeypatch.setattr(hook_module, "LeapHook", FakeHook)
    FakeHook.made = []
    FakeHook.records = [leap_record("done-001", "COMPLETED"), leap_record("err-001", "ERROR")]
    return FakeHook


class FakeTI:
    def __init__(self) -> None:
        self.xcoms: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value


def run(task: Any, **params: Any) -> Any:
    """Render the task's templates with ``params``, then execute it."""
    context: dict[str, Any] = {"params": params, "ti": FakeTI()}
    task.render_template_fields(context)
    return task.execute(context), context["ti"]


# -- TriageOperator ----------------------------------------------------------------------------


def triage_op(**kwargs: Any) -> TriageOperator:
    return TriageOperator(task_id="triage", **kwargs)


@pytest.mark.parametrize(
    ("ref_ids", "sent"),
    [
        (None, None),
        ("done-001", ["done-001"]),
        ("done-001, err-001", ["done-001", "err-001"]),
        ("{{ params.ids }}", ["done-001", "err-001"]),  # a list rendered as text
        (["done-001", "done-001"], ["done-001"]),
    ],
)
def test_ref_ids_forms(fake_hook, ref_ids: Any, sent: Any) -> None:
    run(triage_op(ref_ids=ref_ids), ids=["done-001", "err-001"])
    (hook,) = fake_hook.made
    assert hook.calls[0]["ref_ids"] == sent


@pytest.mark.parametrize("empty", ["", "  ", "[]", [], "{{ params.missing or '' }}", "None"])
def test_empty_ref_ids_fail_instead_of_meaning_everyone(fake_hook, empty: Any) -> None:
    with pytest.raises(LeapException, match="ref_ids"):
        run(triage_op(ref_ids=empty))
    assert fake_hook.made == []  # no hook, no request


def test_filters_are_rendered_then_read_as_times(fake_hook) -> None:
    op = triage_op(
        started_after="2026-01-01",
        interacted_after="{{ params.since }}",
        leap_conn_id="{{ params.conn }}",
        page_size=50,
    )
    run(op, since="2026-02-01 10:00:00+02:00", conn="leap_other")
    (hook,) = fake_hook.made
    assert hook.leap_conn_id == "leap_other"
    assert hook.calls == [
        {
            "ref_ids": None,
            "started_after": datetime(2026, 1, 1, tzinfo=UTC),
            "interacted_after": datetime(2026, 2, 1, 8, tzinfo=UTC),
            "page_size": 50,
        }
    ]


@pytest.mark.parametrize("value", ["", "last tuesday"])
def test_an_unreadable_filter_names_the_argument(fake_hook, value: str) -> None:
    with pytest.raises(LeapException, match=f"interacted_after {value!r} is not an ISO-8601"):
        run(triage_op(interacted_after=value))


def test_now_is_templated_and_drives_the_quiet_period(fake_hook) -> None:
    fake_hook.records = [leap_record("err-001", "ERROR")]  # last interaction 2023-01-11T02:45:50Z
    summary, ti = run(triage_op(now="{{ params.now }}"), now="2023-01-11T03:00:00+00:00")
    assert summary["now"] == "2023-01-11T03:00:00Z"
    assert [i["ref_id"] for i in ti.xcoms["too_recent"]] == ["err-001"]
    summary, ti = run(triage_op(now=datetime(2023, 1, 12)))  # naive: UTC
    assert summary["now"] == "2023-01-12T00:00:00Z"
    assert [i["ref_id"] for i in ti.xcoms["utility_error"]] == ["err-001"]


def test_without_now_the_wall_clock_is_used(fake_hook) -> None:
    summary, ti = run(triage_op())
    now = datetime.fromisoformat(summary["now"].replace("Z", "+00:00"))
    assert abs(now - datetime.now(UTC)) < timedelta(minutes=1)
    assert set(ti.xcoms) == set(BUCKETS)  # every bucket pushed, empty ones too


def test_an_unreadable_now_names_the_argument(fake_hook) -> None:
    with pytest.raises(LeapException, match="now 'noon' is not an ISO-8601"):
        run(triage_op(now="noon"))


def test_constructor_arguments_are_checked_at_once() -> None:
    with pytest.raises(ValueError, match="quiet_period"):
        triage_op(quiet_period=-1)
    with pytest.raises(TypeError, match="not a str"):
        triage_op(agreement_done_statuses="SIGNED")
    assert triage_op(quiet_period=600).quiet_period == timedelta(minutes=10)


# -- ConnectStatusSensor -----------------------------------------------------------------------


def sensor(**kwargs: Any) -> ConnectStatusSensor:
    kwargs.setdefault("deferrable", False)
    return ConnectStatusSensor(task_id="wait", **kwargs)


def poke(task: ConnectStatusSensor, **params: Any) -> Any:
    task.render_template_fields({"params": params})
    return task.poke({})


@pytest.mark.parametrize(
    "targets", ["COMPLETED", "completed", ["completed"], "['COMPLETED']", "{{ params.target }}"]
)
def test_target_statuses_one_or_many_any_case(fake_hook, targets: Any) -> None:
    assert poke(sensor(ref_ids="done-001", target_statuses=targets), target="COMPLETED").is_done
    assert fake_hook.made[0].calls[0]["targets"] == ["COMPLETED"]


@pytest.mark.parametrize("fails", ["ERROR", "error", ["ERROR"], "{{ params.fail }}"])
def test_fail_on_statuses_one_or_many(fake_hook, fails: Any) -> None:
    with pytest.raises(AirflowFailException, match="err-001 \\(ERROR\\)"):
        poke(sensor(ref_ids="err-001", fail_on_statuses=fails), fail="ERROR")


def test_no_fail_statuses_may_be_given_as_none(fake_hook) -> None:
    assert poke(sensor(ref_ids="err-001,done-001", fail_on_statuses=None)).is_done is False


def test_statuses_are_compared_whole_not_letter_by_letter(fake_hook) -> None:
    task = sensor(ref_ids="done-001", target_statuses="COMPLETED", fail_on_statuses="COMPLETED_X")
    assert poke(task).is_done


def test_templated_statuses_are_checked_after_rendering(fake_hook) -> None:
    def task() -> ConnectStatusSensor:  # two templates: nothing to check before rendering
        targets, fails = "{{ params.t }}", "{{ params.f }}"
        return sensor(ref_ids="done-001", target_statuses=targets, fail_on_statuses=fails)

    with pytest.raises(LeapException, match=r"\['ERROR'\] cannot be both a target and a fail"):
        poke(task(), t="ERROR", f="ERROR")
    assert poke(task(), t="COMPLETED", f="ERROR").is_done


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ref_ids": ""}, "ref_ids is empty"),
        ({"ref_ids": "[]"}, "ref_ids is empty"),
        ({"ref_ids": ["a/b"]}, "Reference ID 'a/b' is not valid for Leap"),
        ({"ref_ids": "abc", "target_statuses": []}, "target_statuses is empty"),
        ({"ref_ids": None}, "ref_ids is None: give a list of strings"),
        ({"ref_ids": "abc", "target_statuses": None}, "target_statuses is None: give a list"),
    ],
)
def test_bad_sensor_arguments_are_leap_exceptions(fake_hook, kwargs: Any, message: str) -> None:
    with pytest.raises(LeapException, match=message):
        poke(sensor(**kwargs))
    assert fake_hook.made == []


def test_leap_conn_id_is_templated(fake_hook) -> None:
    poke(sensor(ref_ids="done-001", leap_conn_id="{{ params.conn }}"), conn="leap_other")
    assert fake_hook.made[0].leap_conn_id == "leap_other"


def test_a_short_interval_against_production_warns(fake_hook, capfd) -> None:
    poke(sensor(ref_ids="done-001", poke_interval=60))
    assert "refreshes Connect data once an hour" in "".join(capfd.readouterr())
    assert sensor(ref_ids=["abc"]).poke_interval == 3600


def test_the_trigger_gets_the_rendered_normalised_arguments(fake_hook) -> None:
    fake_hook.records = [leap_record("part-001", "PARTIAL")]
    task = sensor(ref_ids="{{ params.ids }}", target_statuses="completed", deferrable=True)
    task.render_template_fields({"params": {"ids": "part-001, part-002"}})
    with pytest.raises(TaskDeferred) as deferred:
        task.execute({})
    _, kwargs = deferred.value.trigger.serialize()
    assert kwargs["ref_ids"] == ["part-001", "part-002"]
    assert (kwargs["target_statuses"], kwargs["fail_on_statuses"]) == (["COMPLETED"], [])


def test_unreadable_records_are_reviewed_and_named_in_a_warning(fake_hook, capsys) -> None:
    """Review s11b F6: a run whose records Leap reshaped is no quiet green run."""
    unreadable = [
        connect_record_from_mapping({"id": f"CAISO_x_r{i}", "ref_id": f"r{i}"}) for i in range(4)
    ]
    fake_hook.records = [leap_record("err-001", "ERROR"), *unreadable]
    summary, ti = run(triage_op())
    assert summary["malformed"] == 4
    assert [i["ref_id"] for i in ti.xcoms["needs_review"]] == ["r0", "r1", "r2", "r3"]
    out = capsys.readouterr().out  # the task logger writes there, not to caplog
    (line,) = [line for line in out.splitlines() if "are unreadable" in line]
    assert "warning" in line.lower()
    assert (
        "4 of 5 Leap record(s) are unreadable ('CAISO_x_r0', 'CAISO_x_r1', 'CAISO_x_r2', ...): "
        "they are in needs_review as malformed"
    ) in line


def test_a_run_with_no_unreadable_record_warns_of_none(fake_hook, capsys) -> None:
    run(triage_op())
    out = capsys.readouterr().out
    assert "unreadable" not in out and "does not know" not in out


def test_statuses_the_table_does_not_know_are_named_in_a_warning(fake_hook, capsys) -> None:
    """Review s14c F3: customers Leap gave a new status went to review, in a quiet green run."""
    guide = guide_example()
    guide["utility_connections"][0]["status"] = "AUTHORIZING"
    new_utility_status = connect_record_from_mapping(
        {**guide, "id": "CAISO_x_auth-001", "ref_id": "auth-001", "connection_status": "PARTIAL"}
    )
    fake_hook.records = [
        *(leap_record(f"prog-{i:03}", "IN_PROGRESS") for i in range(3)),
        new_utility_status,
        leap_record("err-001", "ERROR"),
    ]
    _, ti = run(triage_op())
    assert len(ti.xcoms["needs_review"]) == 4
    (line,) = [x for x in capsys.readouterr().out.splitlines() if "does not know" in x]
    assert "warning" in line.lower()
    assert (
        "4 Leap record(s) carry a status the triage table does not know (unknown_status:"
        "IN_PROGRESS x3, unknown_utility_status:AUTHORIZING x1): they are in needs_review"
    ) in line
