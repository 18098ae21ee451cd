"""Measures of the package's structure that the house's tests bound.

* `room_shares`: each room's share of the project's source lines (non-blank
  lines of the package, configs, benchmarks and launcher). A room is a
  top-level sub-package or module of `icckd_jax/`, or `configs/`,
  `benchmarks/`, `launch.py`.
* `config_walk`: the modules that the run's ConfigDict reaches, following it
  from `main.run` through the calls that pass it (or a ConfigDict inside it,
  such as `config.dataset` or `config.get('input')`, or a tuple, list or
  dict holding one) as an argument. It reads the source, not a run: a call
  is followed where its callee may be a function of the package that the
  calling module names (a local function, an imported function or class, a
  method of the same class or of a local instance of a package class, a
  function of an imported module, of an entry of a module-level table of
  modules such as `_MODULES[name]`, or of `getattr(module, name)`), and
  through `functools.partial`. Names bound to the config by assignment,
  unpacking, `for`, `with` or a call declared to return a ConfigDict carry
  it on; so does a field that a package class declares a ConfigDict (a
  sweep's `Run.teacher`), in every function of a module that sees that
  class. It is a static over-approximation (every branch is taken, every
  entry of a table) that still misses what no name shows: a ConfigDict
  behind a function passed as a value, or in an undeclared attribute.
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
  """A module's functions, the names its imports bind, and its module-level
  tables of modules (`_MODULES = {'kd': kd, ...}`)."""

  def __init__(self, name: str, tree: ast.Module):
    self.name = name
    self.functions = {}  # 'f' or 'Class.f' -> FunctionDef
    self.names = {}  # local name -> (module, None) | (module, name)
    self.tables = {}  # local name -> [expressions naming modules]
    self.classes = []  # ClassDef nodes
    for node in tree.body:
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        self.functions[node.name] = node
      elif isinstance(node, ast.ClassDef):
        self.classes.append(node)
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
      elif (
        isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Dict)
        and all(isinstance(t, ast.Name) for t in node.targets)
      ):
        for target in node.targets:
          self.tables[target.id] = list(node.value.values)


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


def _held_fields(modules) -> dict[str, set[str]]:
  """{field: modules of the classes declaring it}: the fields of the
  package's classes annotated to hold a ConfigDict (a sweep's `Run.teacher`),
  which carry the config wherever those classes are used."""
  held = collections.defaultdict(set)
  for name, module in modules.items():
    for node in module.classes:
      for item in node.body:
        if (
          isinstance(item, ast.AnnAssign)
          and isinstance(item.target, ast.Name)
          and 'ConfigDict' in ast.unparse(item.annotation)
        ):
          held[item.target.id].add(name)
  return held


def _visible(module: _Module, modules) -> set[str]:
  """The module and the package modules it imports from."""
  found = {module.name}
  for bound_module, name in module.names.values():
    found.add(bound_module)
    if name:
      found.add(f'{bound_module}.{name}')
  return found & set(modules)


def _local_keys(module: _Module, modules, keys, held) -> set[str]:
  """`keys`, with '.X' for each held field X `module` can see."""
  visible = _visible(module, modules)
  return keys | {f'.{f}' for f, where in held.items() if where & visible}


def _readers(modules, keys, held) -> list[tuple[str, str, None]]:
  """(module, function, None) of each function that reads a held field it
  can see (as an attribute, not a method: `d.values()`)."""
  found = []
  for name, module in modules.items():
    local = _local_keys(module, modules, keys, held) - keys
    if not local:
      continue
    for key, func in module.functions.items():
      if func is None:
        continue
      called = {
        id(node.func) for node in ast.walk(func) if isinstance(node, ast.Call)
      }
      if any(
        isinstance(node, ast.Attribute)
        and f'.{node.attr}' in local
        and id(node) not in called
        for node in ast.walk(func)
      ):
        found.append((name, key, None))
  return found


def _carries(expr, tainted: set[str], keys: set[str]) -> bool:
  """Whether `expr` is the config or a ConfigDict inside it (`tainted`
  holds names, and 'self.X' for an attribute that holds one; a section
  read with `.get`), may be one (`a or b`, `a if c else b`), or is a tuple,
  list, set or dict that holds one."""
  if isinstance(expr, ast.Name):
    return expr.id in tainted
  if isinstance(expr, ast.Attribute):
    if f'.{expr.attr}' in keys:  # a held field: `run.teacher`
      return True
    if isinstance(expr.value, ast.Name) and expr.value.id == 'self':
      return f'self.{expr.attr}' in tainted
    return expr.attr in keys and _carries(expr.value, tainted, keys)
  if isinstance(expr, ast.Subscript):
    return _carries(expr.value, tainted, keys)
  if (  # config.get('dataset')
    isinstance(expr, ast.Call)
    and isinstance(expr.func, ast.Attribute)
    and expr.func.attr == 'get'
    and expr.args
    and isinstance(expr.args[0], ast.Constant)
    and expr.args[0].value in keys
  ):
    return _carries(expr.func.value, tainted, keys)
  if isinstance(expr, ast.BoolOp):  # config.get('input') or {}
    return any(_carries(e, tainted, keys) for e in expr.values)
  if isinstance(expr, ast.IfExp):
    return any(_carries(e, tainted, keys) for e in (expr.body, expr.orelse))
  if isinstance(expr, ast.Starred):
    return _carries(expr.value, tainted, keys)
  if isinstance(expr, (ast.Tuple, ast.List, ast.Set)):
    return any(_carries(e, tainted, keys) for e in expr.elts)
  if isinstance(expr, ast.Dict):
    return any(_carries(e, tainted, keys) for e in expr.values if e)
  return False


class _Scope:
  """What the names of one function refer to: the module it is in, its
  class, and its local names bound to modules (`module = _MODULES[name]`,
  `module = getattr(package, name)`) or to instances of a package class
  (`ckpts = checkpoint.Checkpoints(...)`, `with Class(...) as c`)."""

  def __init__(self, module: _Module, cls: str | None, func, modules):
    self.module, self.cls, self.modules = module, cls, modules
    self.local_modules = {}  # name -> [module names]
    self.instances = {}  # name -> [(module name, class)]
    for node in ast.walk(func):
      if isinstance(node, ast.Assign):
        pairs = [(t, node.value) for t in node.targets]
      elif isinstance(node, ast.withitem) and node.optional_vars is not None:
        pairs = [(node.optional_vars, node.context_expr)]
      else:
        continue
      for target, value in pairs:
        if not isinstance(target, ast.Name):
          continue
        found = self.module_refs(value)
        if found:
          self.local_modules[target.id] = found
        elif isinstance(value, ast.Call):
          classes = [
            t for t in self.callees(value.func) if t[1] in self._classes(t[0])
          ]
          if classes:
            self.instances[target.id] = classes

  def _classes(self, module_name: str) -> set[str]:
    return {
      k.split('.')[0] for k in self.modules[module_name].functions if '.' in k
    }

  def _module_of(self, bound) -> str | None:
    module, name = bound
    for candidate in (f'{module}.{name}' if name else None, module):
      if candidate in self.modules and (name is None or candidate != module):
        return candidate
    return None

  def module_refs(self, expr) -> list[str]:
    """The package modules `expr` may be: a module name, an entry of a table
    of modules (`_MODULES[k]`, `_MODULES.get(k)`), `getattr(package, k)`
    of a package's submodules."""
    if isinstance(expr, ast.Name):
      if expr.id in self.local_modules:
        return self.local_modules[expr.id]
      if expr.id in self.module.tables:
        return []
      bound = self.module.names.get(expr.id)
      module = bound and self._module_of(bound)
      return [module] if module else []
    table = None
    if isinstance(expr, ast.Subscript) and isinstance(expr.value, ast.Name):
      table = expr.value.id
    elif (
      isinstance(expr, ast.Call)
      and isinstance(expr.func, ast.Attribute)
      and expr.func.attr == 'get'
      and isinstance(expr.func.value, ast.Name)
    ):
      table = expr.func.value.id
    if table in self.module.tables:
      return [m for v in self.module.tables[table] for m in self.module_refs(v)]
    if _is_getattr(expr):
      package = self.module_refs(expr.args[0])
      return [m for p in package for m in self.modules if m.startswith(f'{p}.')]
    return []

  def callees(self, func) -> list[tuple[str, str]]:
    """(module name, function key) of each package function `func` (the
    expression called) may be."""
    module, cls = self.module, self.cls
    if isinstance(func, ast.Name):
      if func.id in module.functions:
        return [(module.name, func.id)]
      bound = module.names.get(func.id)
      if bound and bound[1] and bound[0] in self.modules:
        return [(bound[0], bound[1])]
      return []
    if _is_getattr(func):  # getattr(x, name)(...)
      owners = self.module_refs(func.args[0])
      name = func.args[1] if len(func.args) > 1 else None
      if isinstance(name, ast.Constant) and isinstance(name.value, str):
        return [(m, name.value) for m in owners]
      return [(m, k) for m in owners for k in self.modules[m].functions]
    if not isinstance(func, ast.Attribute):
      return []
    owner = func.value
    if isinstance(owner, ast.Name) and owner.id == 'self' and cls:
      return [(module.name, f'{cls}.{func.attr}')]
    if isinstance(owner, ast.Name) and owner.id in self.instances:
      return [(m, f'{c}.{func.attr}') for m, c in self.instances[owner.id]]
    found = [(m, func.attr) for m in self.module_refs(owner)]
    if found:
      return found
    if isinstance(owner, ast.Name):  # Class.method of an imported class
      bound = module.names.get(owner.id)
      if bound and bound[0] in self.modules and bound[1]:
        return [(bound[0], f'{bound[1]}.{func.attr}')]
    return []


def _bound_by(node, tainted: set[str], keys: set[str], scope) -> list:
  """The targets `node` binds to the config (or a ConfigDict in it): of an
  assignment, a `for` loop or comprehension over a container that holds
  one, a `with ... as`; `a, b = config.x, y` binds `a` alone; a call that
  is passed the config and is declared to return a ConfigDict
  (`config = apply_overrides(base, ...)`) binds its result."""
  pairs = []
  if isinstance(node, ast.Assign):
    pairs = [(t, node.value) for t in node.targets]
  elif isinstance(node, (ast.AnnAssign, ast.NamedExpr)) and node.value:
    pairs = [(node.target, node.value)]
  elif isinstance(node, (ast.For, ast.comprehension)):
    pairs = [(node.target, node.iter)]
  elif isinstance(node, ast.withitem) and node.optional_vars is not None:
    pairs = [(node.optional_vars, node.context_expr)]
  bound = []
  for target, value in pairs:
    if (
      isinstance(target, ast.Tuple)
      and isinstance(value, ast.Tuple)
      and len(target.elts) == len(value.elts)
    ):
      pairs.extend(zip(target.elts, value.elts))
    elif _carries(value, tainted, keys) or _returns_config(
      value, tainted, keys, scope
    ):
      bound.append(target)
  return bound


def _returns_config(value, tainted, keys, scope) -> bool:
  """Whether `value` calls a package function declared to return a
  ConfigDict with the config among its arguments."""
  if not isinstance(value, ast.Call) or not any(
    _carries(a, tainted, keys)
    for a in (*value.args, *(k.value for k in value.keywords))
  ):
    return False
  for module_name, key in scope.callees(value.func):
    func = scope.modules[module_name].functions.get(key)
    if func is not None and func.returns is not None:
      if 'ConfigDict' in ast.unparse(func.returns):
        return True
  return False


def _bindings(func, tainted: set[str], keys: set[str], scope) -> list:
  """Adds to `tainted` every name `func` binds to the config, to a fixed
  point (`a = config.x; b = a`); returns the attribute targets bound
  (`self.config = config`)."""
  attributes = []
  while True:
    before = len(tainted)
    for node in ast.walk(func):
      for target in _bound_by(node, tainted, keys, scope):
        if isinstance(target, ast.Attribute):
          attributes.append(target)
        tainted.update(
          n.id
          for n in ast.walk(target)
          if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
        )
    if len(tainted) == before:
      return attributes


def _is_getattr(expr) -> bool:
  return (
    isinstance(expr, ast.Call)
    and isinstance(expr.func, ast.Name)
    and expr.func.id == 'getattr'
    and len(expr.args) >= 1
  )


def _is_partial(func) -> bool:
  return (isinstance(func, ast.Name) and func.id == 'partial') or (
    isinstance(func, ast.Attribute)
    and func.attr == 'partial'
    and isinstance(func.value, ast.Name)
    and func.value.id == 'functools'
  )


def _parameters(func) -> list[str]:
  args = func.args
  return [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]


def config_walk(
  start=('icckd_jax.main', 'run'), parameter='config', via: dict | None = None
):
  """The modules `parameter` of function `start` reaches, as a set (and in
  `via`, when given, {module: 'caller module.function'} of the first call
  that brought the config there).

  A call is followed where what it calls may be a package function: one the
  module defines or imports, a method of the same class or of a local
  instance of a package class, a function of an imported module, of an
  entry of a module-level table of modules or of `getattr(module, name)`
  (every function of the module when the name is not a constant), and the
  function `functools.partial` binds (its bound arguments are its first).
  """
  modules = _modules()
  fields = _held_fields(modules)
  config_keys = _config_keys()
  seen = set()
  reached = set()
  held = {}  # (module, class) -> {'self.X'}: attributes holding the config
  todo = [(*start, parameter), *_readers(modules, config_keys, fields)]
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
    keys = _local_keys(module, modules, config_keys, fields)
    scope = _Scope(module, cls, func, modules)
    for target in _bindings(func, tainted, keys, scope):
      if (
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
    scope = _Scope(module, cls, func, modules)
    for node in ast.walk(func):
      if not isinstance(node, ast.Call):
        continue
      args, called = node.args, node.func
      if _is_partial(called) and args:
        called, args = args[0], args[1:]
      for target in scope.callees(called):
        callee = modules[target[0]].functions.get(target[1])
        if callee is None:
          continue
        params = _parameters(callee)
        if params and params[0] in ('self', 'cls'):
          params = params[1:]
        for i, arg in enumerate(args):
          if i < len(params) and _carries(arg, tainted, keys):
            todo.append((*target, params[i]))
            if via is not None:
              via.setdefault(target[0], f'{module_name}.{key}')
        for keyword in node.keywords:
          if keyword.arg and _carries(keyword.value, tainted, keys):
            todo.append((*target, keyword.arg))
            if via is not None:
              via.setdefault(target[0], f'{module_name}.{key}')
  return reached
