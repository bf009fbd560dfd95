from pathlib import Path

import pytest

from circuitbench.errors import CircuitbenchError
from circuitbench.registry import Registry
from circuitbench.specs.catalog import all_tasks, load_task, model_registry

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str, name: str = "mytask") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


GOOD = """
name: mytask
generator: {name: fibonacci, length: 5}
metrics: [logit_diff, accuracy]
"""


def test_every_shipped_task_validates():
    tasks = all_tasks()
    assert {"induction", "fibonacci"} <= set(tasks)
    for path in sorted((REPO / "tasks" / "examples").glob("*.yaml")):
        load_task(str(path))


def test_good_spec_and_defaults(tmp_path):
    spec = load_task(str(write(tmp_path, GOOD)))
    assert spec.generator.length == 5 and spec.generator.max_start == 25
    assert spec.main_metric == "logit_diff" and spec.split == "test"


def test_unknown_top_level_field_names_file_and_field(tmp_path):
    path = write(tmp_path, GOOD + "n_promts: 10\n")
    with pytest.raises(CircuitbenchError) as e:
        load_task(str(path))
    assert str(path) in str(e.value) and "n_promts" in str(e.value) and "unknown field" in str(e.value)


def test_generator_params_validated_by_generator_model(tmp_path):
    path = write(tmp_path, GOOD.replace("length: 5", "length: 2"))
    with pytest.raises(CircuitbenchError) as e:
        load_task(str(path))
    assert "generator.fibonacci.length" in str(e.value)
    path = write(tmp_path, GOOD.replace("length: 5", "lenght: 5"))
    with pytest.raises(CircuitbenchError) as e:
        load_task(str(path))
    assert "generator.fibonacci.lenght" in str(e.value)


def test_unknown_generator_and_metric(tmp_path):
    with pytest.raises(CircuitbenchError) as e:
        load_task(str(write(tmp_path, GOOD.replace("name: fibonacci", "name: fibonaci"))))
    assert "fibonaci" in str(e.value)
    with pytest.raises(CircuitbenchError) as e:
        load_task(str(write(tmp_path, GOOD.replace("accuracy", "acuracy"))))
    assert "Did you mean 'accuracy'" in str(e.value) and "metrics.1" in str(e.value)


def test_answer_metric_on_answerless_generator_is_refused(tmp_path):
    text = "name: mytask\ngenerator: {name: induction}\nmetrics: [logit_diff]\n"
    with pytest.raises(CircuitbenchError, match="need an answer token"):
        load_task(str(write(tmp_path, text)))


def test_broken_yaml_is_an_error_not_skipped(tmp_path):
    write(tmp_path, "name: broken\ngenerator: [unclosed\n", name="broken")
    with pytest.raises(CircuitbenchError, match="broken.yaml"):
        all_tasks((str(tmp_path),))


def test_unknown_task_suggests():
    with pytest.raises(CircuitbenchError, match="Did you mean 'fibonacci'"):
        load_task("fibonaci")


def test_include_path_adds_tasks(tmp_path):
    write(tmp_path, GOOD)
    assert "mytask" in all_tasks((str(tmp_path),))


def test_registry_did_you_mean():
    reg: Registry[int] = Registry("widget")
    reg.add("logit_diff", 1)
    with pytest.raises(CircuitbenchError, match="Did you mean 'logit_diff'"):
        reg.get("logit_dif")
    with pytest.raises(CircuitbenchError, match="registered twice"):
        reg.add("logit_diff", 2)


def test_spec_hash_changes_with_content(tmp_path):
    a = load_task(str(write(tmp_path, GOOD)))
    b = load_task(str(write(tmp_path, GOOD.replace("length: 5", "length: 6"))))
    assert a.spec_hash() != b.spec_hash()
    assert a.spec_hash() == load_task(str(write(tmp_path, GOOD))).spec_hash()


def test_model_registry_has_required_models():
    names = set(model_registry())
    required = {"gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl", "gpt-neo-125M", "gpt-neo-1.3B",
                "gpt-neo-2.7B", "pythia-70m", "pythia-160m", "pythia-410m", "pythia-1b", "pythia-1.4b",
                "pythia-2.8b", "toy-induction-2l"}
    assert required <= names


def test_suite_expands_to_every_catalog_task_in_name_order():
    from circuitbench.specs.catalog import expand_task_names, task_files

    names = sorted(p.stem for p in (REPO / "tasks").glob("*.yaml"))
    assert expand_task_names(["suite"]) == names == sorted(task_files(suite=True))
    # the known-answer tasks (tracr zoo) load by name but stay out of the suite
    known = {p.stem for p in (REPO / "tasks" / "known_answers").glob("*.yaml")}
    assert len(known) >= 4 and known <= set(task_files()) and not known & set(names)
    both = expand_task_names(["x2", "suite"])
    assert both[:2] == ["x2", names[0]] and len(both) == len(names) + 1


SHIPPED = {"toy-tasks": 8, "toy-induction-2l": 8}  # heads of the shipped toys the suite tasks default to


@pytest.mark.parametrize("task", ["ioi", "seq_digits", "seq_numwords", "seq_months", "seq_days", "seq_letters",
                                  "seq_sentence", "x2", "arith_k", "fibonacci", "sorting", "induction"])
def test_shipped_rules_pick_some_but_not_all_heads_of_the_shipped_toys(task):
    import numpy as np

    from circuitbench.circuits.circuit import Circuit

    rule = load_task(task).circuit
    assert rule is not None and rule.threshold is None
    for heads in SHIPPED.values():
        expected = min(rule.top_k, heads) if rule.top_k is not None else max(1, round(rule.fraction * heads))
        assert 0 < expected < heads
        scores = np.random.default_rng(0).normal(size=(2, heads // 2))
        assert len(Circuit.from_scores(scores, rule, "m").heads) == expected
