"""GRPO's reward functions: specs, loading a user's file (and every way it can be wrong), scoring, the built-ins."""

import textwrap

import pytest

from coati_tui.core.errors import ConfigError, error_kind
from coati_tui.trainer import rewards as R
from coati_tui.trainer.rewards import RewardError


def write(tmp_path, body, name="my_rewards.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


USER = """\
def right(prompts, completions, answer, **kw):
    return [1.0 if c.strip() == a else 0.0 for c, a in zip(completions, answer)]

def half(prompts, completions, **kw):
    return [0.5 for _ in completions]

def boom(prompts, completions, **kw):
    x = {}
    return x["missing"]

def short(prompts, completions, **kw):
    return [1.0]

def words(prompts, completions, **kw):
    return [1.0, "high"]

def nan(prompts, completions, **kw):
    return [0.0, float("nan")]

def yes(prompts, completions, **kw):
    return [True, False]

def one(prompts, completions, **kw):
    return 1.0

NOT_A_FN = 3
"""


# ---- specs -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "spec, want",
    [
        ("exact_answer", ("builtin", "exact_answer", 1.0)),
        ("length=0.2", ("builtin", "length", 0.2)),
        (" format = -1.5 ", ("builtin", "format", -1.5)),
        ("my.py:fmt=0.5", ("my.py", "fmt", 0.5)),
        ("path/to/r.py:score", ("path/to/r.py", "score", 1.0)),
        ("C:/x/r.py:f", ("C:/x/r.py", "f", 1.0)),  # a drive letter: the split is at the last ':'
        ("C:\\x\\r.py:f=2", ("C:\\x\\r.py", "f", 2.0)),
        ("a=b/r.py:f", ("a=b/r.py", "f", 1.0)),  # an '=' in a folder is not a weight
        ("a=b/r.py:f=3", ("a=b/r.py", "f", 3.0)),
    ],
)
def test_parse_spec(spec, want):
    assert R.parse_spec(spec) == want


@pytest.mark.parametrize(
    "spec, words",
    [
        ("exact", ["no builtin 'exact'", "exact_answer, format, length, demo"]),
        ("my.py", ["file.py:func"]),
        ("length=abc", ["weight 'abc'"]),
        ("length=", ["weight ''"]),
        ("length=nan", ["weight 'nan'"]),
        ("length=inf", ["weight 'inf'"]),
        ("my.py:", ["path/to/file.py:function_name"]),
        (":f", ["path/to/file.py:function_name"]),
        ("C:/x/r.py", ["path/to/file.py:function_name"]),  # no function: '/x/r.py' is not a name
        ("", ["no builtin ''"]),
    ],
)
def test_parse_spec_rejects(spec, words):
    with pytest.raises(ConfigError) as e:
        R.parse_spec(spec)
    for w in words:
        assert w in str(e.value)
    assert repr(spec) in str(e.value)


# ---- loading a user's file -------------------------------------------------------------------------
def test_a_user_function_gets_the_columns(tmp_path):
    path = write(tmp_path, USER)
    (fn,) = R.load([f"{path}:right=2"])
    assert (fn.name, fn.weight, fn.source) == ("right", 2.0, str(path))
    total, per = R.score([fn], ["q1", "q2"], [" 4 ", "5"], {"answer": ["4", "6"]})
    assert per == {"right": [1.0, 0.0]}
    assert total == [2.0, 0.0]


def test_two_functions_from_one_file_and_the_weighted_total(tmp_path):
    path = write(tmp_path, USER)
    fns = R.load([f"{path}:right=2", f"{path}:half=-0.4", "length=0.5"], {"length_target": 4})
    completions = ["yes", "yesyesyes"]  # 3 chars: no penalty; 9 chars: -(9-4)/4 floored at -1
    total, per = R.score(fns, ["p", "p"], completions, {"answer": ["yes", "no"]})
    assert per == {"right": [1.0, 0.0], "half": [0.5, 0.5], "length": [0.0, -1.0]}
    assert total == pytest.approx([2 * 1.0 - 0.4 * 0.5 + 0.0, 0.0 - 0.4 * 0.5 + 0.5 * -1.0])  # [1.8, -0.7]
    assert fns[0].fn.__module__ == fns[1].fn.__module__  # the file was imported once


def test_each_load_imports_under_its_own_module_name(tmp_path):
    path = write(tmp_path, USER)
    a, b = R.load([f"{path}:half"])[0], R.load([f"{path}:half"])[0]
    assert a.fn.__module__ != b.fn.__module__


@pytest.mark.parametrize(
    "func, words",
    [
        ("boom", ["function boom", "KeyError", "'missing'", ':9: `return x["missing"]`']),
        ("short", ["function short", "returned 1 scores for 2 completions"]),
        ("words", ["function words", "score 1 is 'high' (str)"]),
        ("nan", ["function nan", "score 1 is nan (float)"]),
        ("yes", ["function yes", "score 0 is True (bool)"]),
        ("one", ["function one", "returned a float, not a list of 2 floats"]),
    ],
)
def test_a_bad_user_function_is_named(tmp_path, func, words):
    path = write(tmp_path, USER)
    fns = R.load([f"{path}:{func}"])
    with pytest.raises(RewardError) as e:
        R.score(fns, ["p", "p"], ["a", "b"], {})
    assert str(path) in str(e.value)
    for w in words:
        assert w in str(e.value)
    assert isinstance(e.value, ConfigError)
    assert error_kind(e.value) == "config"


def test_a_syntax_error_names_the_file_and_line(tmp_path):
    path = write(tmp_path, "def ok(p, c, **kw):\n    return [0.0]\n\ndef bad(p, c:\n    return []\n")
    with pytest.raises(ConfigError) as e:
        R.load([f"{path}:ok"])
    msg = str(e.value)
    assert "SyntaxError" in msg and f"{path}:4" in msg and "def bad(p, c:" in msg
    assert f"'{path}:ok'" in msg


def test_an_import_that_raises_names_the_exception_and_line(tmp_path):
    path = write(tmp_path, "import os\nVALUE = int('x')\n")
    with pytest.raises(ConfigError) as e:
        R.load([f"{path}:f"])
    msg = str(e.value)
    assert "ValueError" in msg and "invalid literal" in msg and f"{path}:2" in msg


@pytest.mark.parametrize(
    "setup, func, words",
    [
        (lambda p: None, "f", ["does not exist"]),
        (lambda p: p.with_suffix(".txt").write_text("x"), "f", ["is not a .py file"]),
        (lambda p: p.mkdir(), "f", ["is not a .py file"]),
        (lambda p: p.write_text(USER), "nope", ["has no function 'nope'", "boom, half, nan, one"]),
        (lambda p: p.write_text(USER), "NOT_A_FN", ["'NOT_A_FN' is a int, not a function"]),
    ],
)
def test_a_bad_file_or_function_is_named(tmp_path, setup, func, words):
    path = tmp_path / "r.py"
    setup(path)
    if (tmp_path / "r.txt").exists():
        path = tmp_path / "r.txt"
    with pytest.raises(ConfigError) as e:
        R.load([f"{path}:{func}"])
    assert str(path) in str(e.value) and f"'{path}:{func}'" in str(e.value)
    for w in words:
        assert w in str(e.value)


def test_bad_settings_are_named():
    with pytest.raises(ConfigError, match="format_regex"):
        R.load(["format"], {"format_regex": "(unclosed"})
    for bad in (0, -5, 2.5, True, "200"):
        with pytest.raises(ConfigError, match="length_target"):
            R.load(["length"], {"length_target": bad})
    assert R.load(["demo"], {"format_regex": "(unclosed", "unknown": 1})[0].name == "demo"  # unused: not checked


# ---- scoring -----------------------------------------------------------------------------------------
def test_a_builtin_twice_gets_a_numbered_key():
    fns = R.load(["length", "length=2", "length=3"], {"length_target": 2})
    total, per = R.score(fns, ["p"], ["abc"], {})
    assert list(per) == ["length", "length#2", "length#3"]
    assert per["length#3"] == [-0.5]
    assert total == pytest.approx([-0.5 * (1 + 2 + 3)])


def test_no_functions_score_zero():
    assert R.score([], ["p", "q"], ["a", "b"], {}) == ([0.0, 0.0], {})


# ---- the built-ins -----------------------------------------------------------------------------------
def exact(completions, answers):
    return R.score(R.load(["exact_answer"]), ["p"] * len(completions), completions, {"answer": answers})[1][
        "exact_answer"
    ]


@pytest.mark.parametrize(
    "completion, answer, want",
    [
        ("so it is \\boxed{42}.", "42", 1.0),
        ("\\boxed{41} no wait \\boxed{42}", "42", 1.0),  # the last box
        ("\\boxed{42} no wait \\boxed{41}", "42", 0.0),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}", 1.0),  # nested braces
        ("\\boxed{7} then \\boxed{8", "7", 1.0),  # an unclosed box is skipped
        ("\\boxed{3} but the text ends in 42", "42", 0.0),  # a box wins over the last number
        ("48/2 = 24\n#### 72\nThat is all, 5", "72", 1.0),  # the line after ####
        ("#### 1,000", "1000", 1.0),
        ("#### 3.0", "3", 1.0),
        ("#### 7", "72", 0.0),
        ("She has 3 apples, then 2 more: 5 apples.", "5", 1.0),  # the last number
        ("The total is 1,234,567.", "1234567", 1.0),
        ("It is 5, not 6", "5", 0.0),
        ("-3.", "-3", 1.0),
        ("Paris.", "paris", 1.0),  # case and punctuation
        ("I think it's Paris", "Paris", 0.0),  # no colon: the whole text must match
        ("The capital is: PARIS!", "Paris", 1.0),  # after the last colon
        ("答案是：北京。", "北京", 1.0),
        ("答案是:北京！", "北京", 1.0),
        ("答案是北京。", "北京", 0.0),
        ("北京", "北京", 1.0),
        ("答案：\\boxed{上海}", "北京", 0.0),
        ("一共有：1,000个", 1000, 1.0),  # a number in a JSON column
        ("答案是 ７", "7", 1.0),  # full-width digits are numbers too
        ("anything", None, 0.0),
        ("", "", 0.0),
    ],
)
def test_exact_answer(completion, answer, want):
    assert exact([completion], [answer]) == [want]


def test_exact_answer_without_an_answer_column_lists_the_columns():
    with pytest.raises(RewardError) as e:
        R.score(R.load(["exact_answer"]), ["p"], ["x"], {"solution": ["1"], "level": [2]})
    assert "'answer'" in str(e.value) and "level, solution" in str(e.value) and "exact_answer" in str(e.value)
    assert error_kind(e.value) == "config"


def test_format_and_its_default():
    (default,) = R.load(["format"])
    assert R.score([default], ["p"] * 3, ["x", "  \n ", ""], {})[1]["format"] == [1.0, 0.0, 0.0]
    (think,) = R.load(["format"], {"format_regex": r"<think>.*</think>\s*答案：.+"})
    texts = ["  <think>a\nb</think>\n答案：北京 ", "答案：北京", "<think>x</think>"]
    assert R.score([think], ["p"] * 3, texts, {})[1]["format"] == [1.0, 0.0, 0.0]


def test_length():
    (fn,) = R.load(["length"])  # the default target: 200 characters
    texts = ["a" * 200, "a" * 250, "a" * 400, "a" * 1000, "字" * 300]
    assert R.score([fn], ["p"] * 5, texts, {})[1]["length"] == pytest.approx([0.0, -0.25, -1.0, -1.0, -0.5])


def test_demo():
    (fn,) = R.load(["demo"])
    prompts = ["List three fruits.", "请列出三种水果。", "List three fruits."]
    texts = ["apple, mango, lemon.", "苹果、芒果、樱桃。", "lime, olive, durian."]
    assert R.score([fn], prompts, texts, {})[1]["demo"] == pytest.approx([2 / 3, 1.0, 0.0])
