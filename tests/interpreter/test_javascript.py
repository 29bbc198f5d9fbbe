"""JavaScript and TypeScript through silo's Node.js driver: values as main results, real
errors, notebook-style state, top-level await, streaming, env vars and interrupts."""

import uuid

import pytest
from e2b import TimeoutException

from conftest import needs_kernel

js = needs_kernel("javascript")
ts = needs_kernel("typescript")


@pytest.fixture
def js_ctx(sandbox):
    """A JavaScript context of its own, so state from other tests cannot leak in."""
    ctx = sandbox.create_code_context(language="javascript")
    yield ctx
    sandbox.remove_code_context(ctx)


@pytest.fixture
def ts_ctx(sandbox):
    ctx = sandbox.create_code_context(language="typescript")
    yield ctx
    sandbox.remove_code_context(ctx)


@js
def test_last_expression_is_the_main_result(sandbox):
    execution = sandbox.run_code("1+1", language="js")
    assert execution.error is None
    assert execution.text == "2"
    assert [r.is_main_result for r in execution.results] == [True]
    assert execution.logs.stdout == []
    # Strings lose their quotes as the SDK expects; objects are shown as util.inspect does.
    assert sandbox.run_code("'abc'", language="js").text == "abc"
    obj = sandbox.run_code("({a: 1, b: [1, 2], s: 'x'})", language="javascript")
    assert obj.text == "{ a: 1, b: [ 1, 2 ], s: 'x' }"
    assert sandbox.run_code("new Map([['k', 1]])", language="js").text == "Map(1) { 'k' => 1 }"


@js
def test_statements_and_undefined_have_no_result(sandbox):
    for code in ["let nothing = 1", "undefined", "console.log('only output')"]:
        execution = sandbox.run_code(code, language="js")
        assert execution.error is None, code
        assert execution.results == [], code


@js
def test_console_streams_in_order(sandbox):
    seen = []
    execution = sandbox.run_code(
        "console.log('out 1'); console.error('err 1'); process.stdout.write('out 2\\n'); 7",
        language="js",
        on_stdout=lambda m: seen.append(("out", m.line)),
        on_stderr=lambda m: seen.append(("err", m.line)),
    )
    assert seen == [("out", "out 1\n"), ("err", "err 1\n"), ("out", "out 2\n")]
    assert execution.logs.stdout == ["out 1\n", "out 2\n"]
    assert execution.logs.stderr == ["err 1\n"]
    assert execution.text == "7"


@js
def test_stdout_streams_while_code_still_runs(sandbox, touch):
    # The code waits for a file that only the stdout callback creates (see test_sync).
    flag = f"/tmp/silo-js-stream-{uuid.uuid4()}"
    lines = []

    def on_stdout(msg):
        lines.append(msg.line)
        if msg.line == "waiting\n":
            touch(flag)

    execution = sandbox.run_code(
        f"""
const fs = require('fs');
console.log('waiting');
let released = false;
for (let i = 0; i < 200 && !released; i++) {{
  released = fs.existsSync({flag!r});
  if (!released) await new Promise(r => setTimeout(r, 50));
}}
console.log(released ? 'released' : 'gave up');
fs.unlinkSync({flag!r});
""",
        language="js",
        on_stdout=on_stdout,
    )
    assert execution.error is None, execution.error
    assert execution.logs.stdout == ["waiting\n", "released\n"]


@js
def test_errors_carry_name_message_and_stack(sandbox, js_ctx):
    failing = sandbox.run_code(
        "function inner() {\n  throw new TypeError('js boom');\n}\ninner()", context=js_ctx
    )
    assert failing.error.name == "TypeError"
    assert failing.error.value == "js boom"
    assert "TypeError: js boom" in failing.error.traceback
    assert "at inner" in failing.error.traceback
    assert "node_driver" not in failing.error.traceback
    assert failing.results == []

    missing = sandbox.run_code("notDefinedAnywhere + 1", context=js_ctx)
    assert missing.error.name == "ReferenceError"
    assert "notDefinedAnywhere" in missing.error.value

    syntax = sandbox.run_code("let (", context=js_ctx)
    assert syntax.error.name == "SyntaxError"

    thrown = sandbox.run_code("throw 'plain string'", context=js_ctx)
    assert (thrown.error.name, thrown.error.value) == ("Error", "plain string")

    custom = sandbox.run_code(
        "class MyError extends Error { constructor(m) { super(m); this.name = 'MyError'; } }\n"
        "throw new MyError('mine')",
        context=js_ctx,
    )
    assert (custom.error.name, custom.error.value) == ("MyError", "mine")
    # The context is fine afterwards.
    assert sandbox.run_code("40 + 2", context=js_ctx).text == "42"


@js
def test_state_persists_like_a_notebook(sandbox, js_ctx):
    run = lambda code: sandbox.run_code(code, context=js_ctx)  # noqa: E731
    assert run("const a = 1; let b = 2; var c = 3; function add(x, y) { return x + y }").error is None
    assert run("add(a, b) + c").text == "6"
    # Running a cell with the same declarations again works, as in a notebook.
    assert run("const a = 10; let b = 20").error is None
    assert run("a + b").text == "30"
    assert run("class Point { constructor(x) { this.x = x } }\nconst p = new Point(5)").error is None
    assert run("p instanceof Point && p.x").text == "5"
    assert run("const {x, y = 7} = {x: 1}; const [first, , third] = [1, 2, 3]").error is None
    assert run("[x, y, first, third]").text == "[ 1, 7, 1, 3 ]"
    assert run("let counter = 0; const inc = () => ++counter; inc(); inc()").text == "2"
    assert run("inc()").text == "3"


@js
def test_modules_persist(sandbox, js_ctx):
    assert sandbox.run_code("import path from 'path'; import { join as j } from 'path'", context=js_ctx).error is None
    assert sandbox.run_code("path.join('a', 'b') + ' ' + j('c', 'd')", context=js_ctx).text == "a/b c/d"
    assert sandbox.run_code("const os = require('os'); typeof os.cpus", context=js_ctx).text == "function"
    dynamic = sandbox.run_code("const u = await import('util'); typeof u.inspect", context=js_ctx)
    assert dynamic.error is None, dynamic.error
    assert dynamic.text == "function"


@js
def test_top_level_await(sandbox, js_ctx):
    execution = sandbox.run_code(
        "const v = await new Promise(r => setTimeout(() => r(21), 20));\nv * 2", context=js_ctx
    )
    assert execution.error is None, execution.error
    assert execution.text == "42"
    assert sandbox.run_code("v", context=js_ctx).text == "21"
    # A cell ending in a promise shows what it resolves to.
    assert sandbox.run_code("Promise.resolve('done')", context=js_ctx).text == "done"
    rejected = sandbox.run_code("await Promise.reject(new RangeError('nope'))", context=js_ctx)
    assert (rejected.error.name, rejected.error.value) == ("RangeError", "nope")
    # Functions declared in an async cell are usable before their declaration and later.
    hoisted = sandbox.run_code("await null; const r = twice(4);\nfunction twice(n) { return 2 * n }\nr", context=js_ctx)
    assert hoisted.text == "8"
    assert sandbox.run_code("twice(5)", context=js_ctx).text == "10"


@js
def test_env_vars_apply_to_one_execution(sandbox):
    env = sandbox.run_code("process.env.SILO_JS_VAR", language="js", envs={"SILO_JS_VAR": "jv"})
    assert env.text == "jv"
    after = sandbox.run_code("String(process.env.SILO_JS_VAR)", language="js")
    assert after.text == "undefined"


@js
def test_display_gives_rich_non_main_results(sandbox):
    execution = sandbox.run_code(
        "display.html('<b>hi</b>'); display.markdown('# t'); display({k: 1}); 3", language="js"
    )
    assert [r.is_main_result for r in execution.results] == [False, False, False, True]
    assert execution.results[0].html == "<b>hi</b>"
    assert execution.results[1].markdown == "# t"
    assert execution.results[2].text == "{ k: 1 }"
    assert execution.text == "3"


@js
def test_execution_count_increments(sandbox, js_ctx):
    first = sandbox.run_code("1", context=js_ctx).execution_count
    assert sandbox.run_code("2", context=js_ctx).execution_count == first + 1


@js
@pytest.mark.parametrize(
    "code", ["while (true) {}", "await new Promise(() => {})"], ids=["busy-loop", "pending-await"]
)
def test_timeout_interrupts_and_context_survives(sandbox, js_ctx, code):
    assert sandbox.run_code("const kept = 'still here'", context=js_ctx).error is None
    with pytest.raises(TimeoutException):
        sandbox.run_code(code, context=js_ctx, timeout=2)
    execution = sandbox.run_code("kept + ' ' + (1 + 1)", context=js_ctx, timeout=30)
    assert execution.error is None, execution.error
    assert execution.text == "still here 2"


@js
def test_late_errors_do_not_kill_the_context(sandbox, js_ctx):
    assert sandbox.run_code("setTimeout(() => { throw new Error('later') }, 0); 1", context=js_ctx).text == "1"
    assert sandbox.run_code("await new Promise(r => setTimeout(r, 50)); 'alive'", context=js_ctx).text == "alive"


@ts
def test_typescript_with_types(sandbox, ts_ctx):
    execution = sandbox.run_code(
        "function sub(x: number, y: number): number { return x - y; }\nsub(1, 2)",
        language="ts",
    )
    assert execution.error is None, execution.error
    assert execution.text == "-1"
    run = lambda code: sandbox.run_code(code, context=ts_ctx)  # noqa: E731
    declared = run(
        "interface User { name: string; age?: number }\n"
        "type Id = string | number;\n"
        "enum Color { Red, Green }\n"
        "const users: User[] = [{ name: 'ada' }];\n"
        "function first<T>(xs: T[]): T { return xs[0]; }\n"
        "class Box<T> { constructor(public value: T) {} }\n"
        "const id: Id = 7;"
    )
    assert declared.error is None, declared.error
    assert run("first(users).name").text == "ada"
    assert run("Color.Green").text == "1"
    assert run("new Box<number>(id as number).value").text == "7"
    awaited = run("const n: number = await Promise.resolve(5);\nn + 1")
    assert awaited.text == "6"
    failing = run("const u: User = users[0];\nthrow new Error(`no ${u.name}`)")
    assert (failing.error.name, failing.error.value) == ("Error", "no ada")
    syntax = run("const x: = 1")
    assert syntax.error.name == "SyntaxError"
