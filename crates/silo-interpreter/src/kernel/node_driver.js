// silo's JavaScript/TypeScript kernel: one Node.js process per context, driven by
// silo-interpreter with one JSON object per line (see node.rs): requests on stdin, messages
// on fd 3. Stdout and stderr are the cells' own: console.log, process.stdout.write and a
// child process started with inherited stdio all write there, so each pipe carries a cell's
// output in the order it was written, and the interpreter reads them as stream output.
//
// Requests:  {"msg_id", "msg_type": "kernel_info_request" | "execute_request", "content"}
// Messages:  {"parent": msg_id, "msg_type", "date", "content", "marks"}, shaped like the
//            Jupyter messages of the same name (status, execute_input, execute_result,
//            display_data, error, execute_reply, kernel_info_reply), so the interpreter maps
//            them exactly as it maps a Jupyter kernel's.
// Marks:     `\x1e<mark id>:<n>\n`, written to stdout and stderr just before message n; its
//            `marks` says on which of them ({"stdout": n, "stderr": n}). Whatever a stream
//            holds before the mark came before the message, and after it, after: so the
//            interpreter knows which cell the bytes belong to (the one announced by the last
//            execute_input before them) and keeps them in order with results and the reply.
//            `\x1e<mark id>:\n` (no number) ends each of this process's own writes, so that
//            each console.log stays one stream message, as with a Jupyter kernel.
//
// Code runs in this process's own global scope (vm.runInThisContext), as ijavascript does:
// one realm, so `instanceof` works across modules and every Node global is there. Before it
// runs, each cell is rewritten with the TypeScript compiler tslab brings (types stripped for
// TypeScript; both languages parsed) so that it behaves like a notebook cell:
//   - top-level `const`/`let`/`class`/`import` become assignments to `var`s, so they persist
//     into later cells and a cell can be run again without "already declared" errors;
//   - a cell with top-level `await` runs inside an async function whose return value is
//     the last expression statement; otherwise the script's completion value is the result.
// Without a compiler, JavaScript runs unrewritten (no top-level await, `let` stays lexical).
//
// Usage: node node_driver.js <javascript|typescript> <mark id> [directory to find the
// compiler from] 3>&1
'use strict';

const fs = require('fs');
const path = require('path');
const readline = require('readline');
const util = require('util');
const vm = require('vm');
const { createRequire } = require('module');
const { pathToFileURL } = require('url');
const { Writable } = require('stream');

const language = process.argv[2] === 'typescript' ? 'typescript' : 'javascript';
// Random, chosen by the interpreter: output does not hold it by chance.
const MARK = `\x1e${process.argv[3]}:`;
const compilerHint = process.argv[4] || '';

// Node's children do not inherit it (libuv closes descriptors above 2 in them).
const PROTOCOL_FD = 3;

// Writes of at most this many bytes to a pipe are never split by another writer's.
const PIPE_BUF = 4096;
const pause = new Int32Array(new SharedArrayBuffer(4));

// Synchronous, so the bytes are out before the next statement of the cell runs. A child
// that inherited stdout may have made it non-blocking (a node child does): then a full pipe
// answers EAGAIN, and the write waits for the interpreter to read.
function writeAll(fd, bytes) {
  for (let at = 0; at < bytes.length;) {
    try {
      at += fs.writeSync(fd, bytes, at);
    } catch (err) {
      if (err.code !== 'EAGAIN') {
        throw err;
      }
      Atomics.wait(pause, 0, 0, 1);
    }
  }
}

// The streams the marks go to, until one fails (the user's code closed it): the
// interpreter then stops waiting for marks there.
const streams = [{ name: 'stdout', fd: 1, open: true }, { name: 'stderr', fd: 2, open: true }];
let lastMark = 0;

function mark() {
  lastMark += 1;
  const bytes = Buffer.from(`${MARK}${lastMark}\n`);
  const marks = {};
  for (const stream of streams.filter((s) => s.open)) {
    try {
      writeAll(stream.fd, bytes);
      marks[stream.name] = lastMark;
    } catch {
      stream.open = false;
    }
  }
  return marks;
}

// Output that a synchronous child wrote before a message is in the stdout and stderr pipes
// before its mark. A message that follows another with no user code run between them
// (`marked: false`: a status, a reply right after its result) needs no mark of its own:
// nothing can have written between the two but a background child, whose output has no
// cell to belong to. Each mark is two writes, ~0.2 ms under gVisor.
function send(parent, msgType, content, { marked = true } = {}) {
  const marks = marked ? mark() : {};
  const line = JSON.stringify({ parent, msg_type: msgType, date: new Date().toISOString(), content, marks });
  writeAll(PROTOCOL_FD, Buffer.from(line + '\n'));
}

// The request that results belong to: the running cell, or the last one (output of timers
// that fire later; the interpreter drops it once that execution has ended). Silent requests
// (the interpreter's own snippets) publish nothing. The interpreter follows the same rule
// for bytes on stdout and stderr, by the marks: a cell's once it sent execute_input, until
// the next request starts.
let outputParent = null;

// process.stdout and process.stderr write straight to fd 1 and 2, each write followed by an
// end mark. Node's own streams would make the pipes non-blocking, for the children that
// share them too.
const writeEnd = Buffer.from(`${MARK}\n`);
function outputStream(stream) {
  const out = new Writable({
    decodeStrings: true,
    write(chunk, encoding, callback) {
      if (stream.open) {
        try {
          if (chunk.length + writeEnd.length <= PIPE_BUF) {
            writeAll(stream.fd, Buffer.concat([chunk, writeEnd]));
          } else {
            // Apart, so that no other writer's bytes can split the mark.
            writeAll(stream.fd, chunk);
            writeAll(stream.fd, writeEnd);
          }
        } catch {
          stream.open = false;
        }
      }
      callback();
    },
  });
  return Object.assign(out, { fd: stream.fd, isTTY: false });
}
// Before anything reads process.stdout, which would make Node's own stream. console.log and
// console.error go through these.
for (const stream of streams) {
  Object.defineProperty(process, stream.name, {
    value: outputStream(stream), configurable: true, enumerable: true, writable: true,
  });
}

const inspect = (value) => util.inspect(value, { colors: false, depth: 4, maxArrayLength: 200 });

// A value's MIME bundle: its inspection, plus whatever it offers itself through
// `_toMime()` (the convention of ijavascript, the kernel E2B's own template uses).
function mimeBundle(value) {
  const bundle = { 'text/plain': inspect(value) };
  if (value !== null && typeof value === 'object' && typeof value._toMime === 'function') {
    const extra = value._toMime();
    if (extra !== null && typeof extra === 'object') {
      Object.assign(bundle, extra);
    }
  }
  return bundle;
}

function publishDisplay(data) {
  if (outputParent !== null) {
    send(outputParent, 'display_data', { data, metadata: {} });
  }
}

// `display(value)` shows a value as a non-main result; `display.html(…)` and friends show
// one rich format.
function display(value) {
  publishDisplay(mimeBundle(value));
}
const formats = {
  html: 'text/html', markdown: 'text/markdown', svg: 'image/svg+xml', png: 'image/png',
  jpeg: 'image/jpeg', latex: 'text/latex', javascript: 'application/javascript',
  json: 'application/json', pdf: 'application/pdf',
};
for (const [method, mime] of Object.entries(formats)) {
  display[method] = (content) => publishDisplay({ [mime]: mime === 'application/json' ? content : String(content) });
}

// What a cell sees besides Node's globals. Not enumerable, so they stay out of inspections
// of globalThis; writable, so a user may shadow them.
const cellFile = path.join(process.cwd(), '[silo cell]');
const cellModule = { exports: {}, filename: cellFile, id: '.', loaded: true };
const globals = {
  require: createRequire(cellFile),
  module: cellModule,
  exports: cellModule.exports,
  __filename: cellFile,
  __dirname: process.cwd(),
  display,
  // Used by rewritten `import x from 'm'`.
  __siloDefault: (m) => (m !== null && m !== undefined && m.__esModule ? m.default : m),
  // Used by rewritten `import('m')`: a vm script's own import() would need
  // --experimental-vm-modules.
  __siloImport: (specifier) => importDynamically(specifier),
};
for (const [name, value] of Object.entries(globals)) {
  Object.defineProperty(globalThis, name, { value, writable: true, configurable: true, enumerable: false });
}

function loadCompiler() {
  const from = [compilerHint, process.cwd(), path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules')]
    .filter((dir) => dir.length > 0);
  for (const name of ['typescript', '@tslab/typescript-for-tslab']) {
    try {
      return require(require.resolve(name, { paths: from }));
    } catch {
      // Try the next name.
    }
  }
  return null;
}
const ts = loadCompiler();
if (ts === null) {
  // To the real stderr: the interpreter keeps its tail for diagnosis.
  fs.writeSync(2, 'silo node driver: no TypeScript compiler found; cells run unrewritten\n');
}

function compileError(message) {
  const err = new SyntaxError(message);
  err.stack = `SyntaxError: ${message}`;
  return err;
}

// TypeScript to JavaScript, module syntax kept (the rewrite turns imports into requires).
function transpile(code) {
  if (ts === null) {
    throw new Error('TypeScript needs the typescript package, which was not found');
  }
  const out = ts.transpileModule(code, {
    fileName: 'cell.ts',
    reportDiagnostics: true,
    compilerOptions: {
      module: ts.ModuleKind.ESNext,
      target: ts.ScriptTarget.ES2022,
      verbatimModuleSyntax: true,
      experimentalDecorators: true,
    },
  });
  const errors = out.diagnostics.filter((d) => d.category === ts.DiagnosticCategory.Error);
  if (errors.length > 0) {
    const text = errors.map((d) => {
      const message = ts.flattenDiagnosticMessageText(d.messageText, '\n');
      if (d.file && d.start !== undefined) {
        const { line, character } = d.file.getLineAndCharacterOfPosition(d.start);
        return `${message} (${line + 1}:${character + 1})`;
      }
      return message;
    });
    throw compileError(text.join('\n'));
  }
  return out.outputText;
}

function isTopLevelAwait(node) {
  let found = false;
  const visit = (n) => {
    if (found || ts.isFunctionLike(n) || ts.isClassStaticBlockDeclaration(n)) {
      return;
    }
    if (ts.isAwaitExpression(n) || (ts.isForOfStatement(n) && n.awaitModifier)) {
      found = true;
      return;
    }
    ts.forEachChild(n, visit);
  };
  ts.forEachChild(node, visit);
  return found;
}

function bindingNames(name, into) {
  if (ts.isIdentifier(name)) {
    into.add(name.text);
    return;
  }
  for (const element of name.elements) {
    if (!ts.isOmittedExpression(element)) {
      bindingNames(element.name, into);
    }
  }
}

// The replacement of one top-level statement, or null to keep it.
function rewriteStatement(st, sf, names, isLast, isAsync) {
  const text = (node) => node.getText(sf);
  if (ts.isVariableStatement(st)) {
    const assignments = [];
    const blockScoped = (st.declarationList.flags & ts.NodeFlags.BlockScoped) !== 0;
    for (const d of st.declarationList.declarations) {
      bindingNames(d.name, names);
      if (d.initializer) {
        assignments.push(`${text(d.name)} = ${text(d.initializer)}`);
      } else if (blockScoped && ts.isIdentifier(d.name)) {
        // `let x;` run again starts over; `var x;` keeps the value, as it always did.
        assignments.push(`${d.name.text} = undefined`);
      }
    }
    return assignments.length > 0 ? `;void (${assignments.join(', ')});` : ';';
  }
  if (ts.isClassDeclaration(st) && st.name) {
    names.add(st.name.text);
    return `;void (${st.name.text} = ${text(st)});`;
  }
  if (ts.isImportDeclaration(st)) {
    const from = `require(${text(st.moduleSpecifier)})`;
    const clause = st.importClause;
    if (!clause) {
      return `;${from};`;
    }
    const parts = [];
    if (clause.name) {
      names.add(clause.name.text);
      parts.push(`${clause.name.text} = __siloDefault(${from})`);
    }
    const bindings = clause.namedBindings;
    if (bindings && ts.isNamespaceImport(bindings)) {
      names.add(bindings.name.text);
      parts.push(`${bindings.name.text} = ${from}`);
    } else if (bindings) {
      const fields = bindings.elements.map((e) => {
        names.add(e.name.text);
        return e.propertyName ? `${e.propertyName.text}: ${e.name.text}` : e.name.text;
      });
      parts.push(`({${fields.join(', ')}} = ${from})`);
    }
    return `;void (${parts.join(', ')});`;
  }
  if (isAsync && ts.isFunctionDeclaration(st)) {
    // Moved out of the async wrapper (see below); the lines stay so positions hold.
    return '\n'.repeat(text(st).split('\n').length - 1);
  }
  if (isAsync && isLast && ts.isExpressionStatement(st)) {
    return `return (${text(st.expression)});`;
  }
  return null;
}

const parse = (js) => ts.createSourceFile('cell.js', js, ts.ScriptTarget.Latest, true, ts.ScriptKind.JS);

// `import(x)` anywhere in the cell becomes `__siloImport(x)`.
function replaceDynamicImports(js) {
  const at = [];
  const visit = (n) => {
    if (ts.isCallExpression(n) && n.expression.kind === ts.SyntaxKind.ImportKeyword) {
      at.push(n.expression);
    }
    ts.forEachChild(n, visit);
  };
  visit(parse(js));
  let out = js;
  for (const node of at.reverse()) {
    out = out.slice(0, node.getStart()) + '__siloImport' + out.slice(node.end);
  }
  return out;
}

// The script to run for a cell, and whether its value is a promise to wait for.
function prepare(source) {
  if (ts === null) {
    return { script: source, isAsync: false };
  }
  let sf = parse(source);
  if (sf.parseDiagnostics.length > 0) {
    // Let V8 compile it unchanged: its SyntaxError points at the user's own text.
    return { script: source, isAsync: false };
  }
  const js = /\bimport\s*\(/.test(source) ? replaceDynamicImports(source) : source;
  sf = js === source ? sf : parse(js);
  const isAsync = isTopLevelAwait(sf);
  const names = new Set();
  const functions = [];
  let out = '';
  let at = 0;
  sf.statements.forEach((st, i) => {
    const replacement = rewriteStatement(st, sf, names, i === sf.statements.length - 1, isAsync);
    if (replacement === null) {
      return;
    }
    if (isAsync && ts.isFunctionDeclaration(st)) {
      functions.push(st.getText(sf));
    }
    const start = st.getStart(sf);
    out += js.slice(at, start) + replacement;
    at = st.end;
  });
  out += js.slice(at);
  // On the first line, so line numbers in stack traces stay the user's.
  const declare = names.size > 0 ? `var ${[...names].join(', ')}; ` : '';
  if (!isAsync) {
    return { script: declare + out, isAsync };
  }
  // Function declarations at script level are hoisted and global, wherever they stand.
  return { script: `${declare}(async () => {${out}\n})();\n${functions.join('\n')}`, isAsync };
}

async function importDynamically(specifier) {
  try {
    return await import(specifier);
  } catch (err) {
    // Resolve a bare or relative name the way the cell's `require` would.
    let resolved;
    try {
      resolved = globals.require.resolve(specifier);
    } catch {
      throw err;
    }
    return import(pathToFileURL(resolved).href);
  }
}

// Set while a cell's promise is awaited: SIGINT rejects it. While the cell runs
// synchronously, vm's breakOnSigint interrupts it instead (and holds back this handler).
let interruptWaiting = null;
process.on('SIGINT', () => {
  if (interruptWaiting !== null) {
    interruptWaiting();
  }
});

// The same error as vm's breakOnSigint gives for a synchronous cell.
function interrupted() {
  const err = new Error('Script execution was interrupted by `SIGINT`');
  err.code = 'ERR_SCRIPT_EXECUTION_INTERRUPTED';
  return err;
}

function untilSettledOrInterrupted(promise) {
  return new Promise((resolve, reject) => {
    interruptWaiting = () => reject(interrupted());
    Promise.resolve(promise).then(resolve, reject);
  }).finally(() => {
    interruptWaiting = null;
  });
}

const isThenable = (v) => v !== null && (typeof v === 'object' || typeof v === 'function') && typeof v.then === 'function';

async function evaluate(code, count) {
  const js = language === 'typescript' ? transpile(code) : code;
  const { script, isAsync } = prepare(js);
  const compiled = new vm.Script(script, { filename: `<cell ${count}>` });
  const value = compiled.runInThisContext({ breakOnSigint: true });
  // A cell that ends in a promise shows what it resolves to, as if awaited.
  return isAsync || isThenable(value) ? untilSettledOrInterrupted(value) : value;
}

// Frames of this driver and of Node's vm machinery say nothing about the user's code.
function userStack(stack) {
  return stack
    .split('\n')
    .filter((line) => !(/^\s+at /.test(line) && (line.includes(__filename) || /\(?node:(vm|internal)/.test(line))))
    .join('\n');
}

function describeError(err) {
  if (err instanceof Error) {
    const stack = typeof err.stack === 'string' ? userStack(err.stack) : `${err.name}: ${err.message}`;
    return { ename: err.name || 'Error', evalue: String(err.message), traceback: stack.split('\n') };
  }
  // `throw 'text'` and other non-errors.
  const value = typeof err === 'string' ? err : inspect(err);
  return { ename: 'Error', evalue: value, traceback: [`Uncaught ${inspect(err)}`] };
}

let executionCount = 0;

async function execute(id, content) {
  const silent = content.silent === true;
  let count = executionCount;
  if (!silent) {
    executionCount += 1;
    count = executionCount;
    send(id, 'execute_input', { code: content.code, execution_count: count });
    outputParent = id;
  }
  try {
    const value = await evaluate(String(content.code ?? ''), count);
    const result = !silent && value !== undefined;
    if (result) {
      send(id, 'execute_result', { execution_count: count, data: mimeBundle(value), metadata: {} });
    }
    send(id, 'execute_reply', { status: 'ok', execution_count: count, user_expressions: {}, payload: [] },
      { marked: !result });
  } catch (err) {
    const error = describeError(err);
    if (!silent) {
      send(id, 'error', error);
    }
    send(id, 'execute_reply', { status: 'error', execution_count: count, ...error }, { marked: silent });
  }
}

async function handle(request) {
  const id = String(request.msg_id);
  outputParent = null;
  send(id, 'status', { execution_state: 'busy' }, { marked: false });
  try {
    switch (request.msg_type) {
      case 'execute_request':
        await execute(id, request.content ?? {});
        break;
      case 'kernel_info_request':
        send(id, 'kernel_info_reply', {
          status: 'ok',
          protocol_version: '5.3',
          implementation: 'silo-node',
          implementation_version: '1',
          language_info: { name: language, version: process.versions.node },
        });
        break;
      default:
        send(id, String(request.msg_type).replace(/_request$/, '_reply'), {
          status: 'error', ename: 'NotImplemented', evalue: `${request.msg_type} is not supported`, traceback: [],
        });
    }
  } finally {
    send(id, 'status', { execution_state: 'idle' }, { marked: false });
  }
}

// Errors of callbacks that outlive their cell (timers, un-awaited promises) are reported
// on stderr, as a notebook does, instead of ending the process and the context's state.
function reportLate(err) {
  const { traceback } = describeError(err);
  process.stderr.write(`${traceback.join('\n')}\n`);
}
process.on('uncaughtException', reportLate);
process.on('unhandledRejection', reportLate);

// One request at a time, in order, as a Jupyter kernel's shell channel works.
let queue = Promise.resolve();
const input = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
input.on('line', (line) => {
  let request;
  try {
    request = JSON.parse(line);
  } catch {
    return;
  }
  queue = queue.then(() => handle(request));
});
// The interpreter closed our stdin: it is gone, and so is the context (once the requests
// already read are answered, which matters only when driving the script by hand).
input.on('close', () => queue.then(() => process.exit(0)));
