"""Measures of the package's structure that the house's tests bound.

* `room_shares`: each room's share of the project's source lines (non-blank
  lines of the package, configs, benchmarks and launcher). A room is a
  top-level sub-package or module of `icckd_jax/`, or `configs/`,
  `benchmarks/`, `launch.py`.
* `config_walk`: the modules that the run's ConfigDict reaches, following it
  from `main.run` through the calls that pass it (or a ConfigDict inside it,
  such as `config.dataset`) as an argument. It reads the source, not a run:
  a call is followed where its callee is a function of the package that the
  calling module names (a local function, an imported function or class, a
  method of the same class). It is a static over-approximation of one kind
  (every branch is taken) and an under-approximation of another (a
  ConfigDict hidden in a container or behind `getattr` is not followed).
"""

import ast
import collections
import pathlib

import ml_collections

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / 'icckd_jax'


def _source_lines(path: pathlib.Path) -> int:
  return sum(1 for line in path.read_text().splitlines() if line.strip())


def room_shares() -> dict[str, float]:
  """{room: share of the project's non-blank source lines}."""
  lines = collections.Counter()
  paths = [
    *PACKAGE.rglob('*.py'),
    *(ROOT / 'configs').rglob('*.py'),
    *(ROOT / 'benchmarks').rglob('*.py'),
    ROOT / 'launch.py',
  ]
  for path in paths:
    parts = path.relative_to(ROOT).parts
    room = '/'.join(parts[:2]) if parts[0] == 'icckd_jax' else parts[0]
    lines[room] += _source_lines(path)
  total = sum(lines.values())
  return {room: n / total for room, n in lines.items()}


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(ROOT).with_suffix('').parts)
  if parts[-1] == '__init__':
    parts.pop()
  return '.'.join(parts)


class _Module:
  """A module's functions and the names its imports bind."""

  def __init__(self, name: str, tree: ast.Module):
    self.name = name
    self.functions = {}  # 'f' or 'Class.f' -> FunctionDef
    self.names = {}  # local name -> ('module', m) | ('object', m, name)
    for node in tree.body:
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        self.functions[node.name] = node
      elif isinstance(node, ast.ClassDef):
        for item in node.body:
          if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
            self.functions[f'{node.name}.{item.name}'] = item
        self.functions.setdefault(
          node.name, self.functions.get(f'{node.name}.__init__')
        )
      elif isinstance(node, ast.ImportFrom) and node.module:
        for alias in node.names:
          self.names[alias.asname or alias.name] = (node.module, alias.name)
      elif isinstance(node, ast.Import):
        for alias in node.names:
          self.names[alias.asname or alias.name] = (alias.name, None)


def _modules() -> dict[str, _Module]:
  return {
    _module_name(path): _Module(_module_name(path), ast.parse(path.read_text()))
    for path in PACKAGE.rglob('*.py')
  }


def _config_keys() -> set[str]:
  """Every key that holds a ConfigDict in some shipped config."""
  keys = set()

  def visit(node):
    for key, value in node.items():
      if isinstance(value, ml_collections.ConfigDict):
        keys.add(key)
        visit(value)

  for path in (ROOT / 'configs').glob('*.py'):
    namespace = {}
    source = path.read_text()
    if 'def get_config' not in source:
      continue
    exec(compile(source, str(path), 'exec'), namespace)  # noqa: S102
    try:
      config = namespace['get_config']()
    except Exception:  # noqa: BLE001 -- a config that needs an argument
      continue
    if isinstance(config, ml_collections.ConfigDict):
      visit(config)
  return keys


def _carries(expr, tainted: set[str], keys: set[str]) -> bool:
  """Whether `expr` is the config or a ConfigDict inside it (`tainted`
  holds names, and 'self.X' for an attribute that holds one)."""
  if isinstance(expr, ast.Name):
    return expr.id in tainted
  if isinstance(expr, ast.Attribute):
    if isinstance(expr.value, ast.Name) and expr.value.id == 'self':
      return f'self.{expr.attr}' in tainted
    return expr.attr in keys and _carries(expr.value, tainted, keys)
  if isinstance(expr, ast.Subscript):
    return _carries(expr.value, tainted, keys)
  return False


def _resolve(call: ast.Call, module: _Module, cls: str | None, modules):
  """(module name, function key) the call goes to, or None."""
  func = call.func
  if isinstance(func, ast.Name):
    if func.id in module.functions:
      return module.name, func.id
    bound = module.names.get(func.id)
    if bound and bound[1] and bound[0] in modules:
      return bound[0], bound[1]
    return None
  if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
    owner = func.value.id
    if owner == 'self' and cls:
      return module.name, f'{cls}.{func.attr}'
    bound = module.names.get(owner)
    if not bound:
      return None
    target = bound[0] if bound[1] is None else f'{bound[0]}.{bound[1]}'
    if target in modules:
      return target, func.attr
    if bound[0] in modules and bound[1]:  # Class.method
      return bound[0], f'{bound[1]}.{func.attr}'
  return None


def _parameters(func) -> list[str]:
  args = func.args
  return [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]


def config_walk(start=('icckd_jax.main', 'run'), parameter='config'):
  """The modules `parameter` of function `start` reaches, as a set."""
  modules = _modules()
  keys = _config_keys()
  seen = set()
  reached = set()
  held = {}  # (module, class) -> {'self.X'}: attributes holding the config
  todo = [(*start, parameter)]
  while todo:
    module_name, key, name = todo.pop()
    if (module_name, key, name) in seen:
      continue
    seen.add((module_name, key, name))
    module = modules.get(module_name)
    func = module and module.functions.get(key)
    if func is None:
      continue
    reached.add(module_name)
    cls = key.split('.')[0] if '.' in key else None
    tainted = {name} | held.get((module_name, cls), set())
    for node in ast.walk(func):  # assignments first: `d = config.dataset`
      if isinstance(node, ast.Assign) and _carries(node.value, tainted, keys):
        for target in node.targets:
          if isinstance(target, ast.Name):
            tainted.add(target.id)
          elif (
            cls
            and isinstance(target, ast.Attribute)
            and isinstance(target.value, ast.Name)
            and target.value.id == 'self'
          ):  # the instance holds it: every method of the class may read it
            attribute = f'self.{target.attr}'
            if attribute not in held.setdefault((module_name, cls), set()):
              held[(module_name, cls)].add(attribute)
              seen -= {s for s in seen if s[1].startswith(f'{cls}.')}
              todo.extend(
                (module_name, k, None)
                for k in module.functions
                if k.startswith(f'{cls}.')
              )
    for node in ast.walk(func):
      if not isinstance(node, ast.Call):
        continue
      target = _resolve(node, module, cls, modules)
      if target is None or modules[target[0]].functions.get(target[1]) is None:
        continue
      params = _parameters(modules[target[0]].functions[target[1]])
      if params and params[0] in ('self', 'cls'):
        params = params[1:]
      for i, arg in enumerate(node.args):
        if i < len(params) and _carries(arg, tainted, keys):
          todo.append((*target, params[i]))
      for keyword in node.keywords:
        if keyword.arg and _carries(keyword.value, tainted, keys):
          todo.append((*target, keyword.arg))
  return reached
