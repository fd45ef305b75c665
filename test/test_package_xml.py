"""package.xml against the code, as `rosdep check` would see it: every module imported at run
time (dovit_ros/, launch/) has its rosdep key as an exec_depend, every module imported by the
tests only as a test_depend, and package.xml names nothing that nothing imports.

Modules rosdep has no key for (torch, safetensors, rosbags, ...) are listed in PIP_ONLY with
their pip requirement, which setup.py must declare; optional backends in OPTIONAL.
"""
import ast
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_DIRS = ('dovit_ros', 'launch')
TEST_DIRS = ('test', 'scripts')

# top-level Python module -> rosdep key
ROSDEP = {
    'rclpy': 'rclpy', 'sensor_msgs': 'sensor_msgs', 'std_msgs': 'std_msgs',
    'diagnostic_msgs': 'diagnostic_msgs', 'rcl_interfaces': 'rcl_interfaces',
    'rosgraph_msgs': 'rosgraph_msgs', 'ament_index_python': 'ament_index_python',
    'launch': 'launch', 'launch_ros': 'launch_ros',
    'numpy': 'python3-numpy', 'cv2': 'python3-opencv', 'yaml': 'python3-yaml',
    'tqdm': 'python3-tqdm', 'matplotlib': 'python3-matplotlib',
    'pytest': 'python3-pytest', 'hypothesis': 'python3-hypothesis',
}
# no rosdep key: pip requirement name (setup.py declares it; README says to pip-install them)
PIP_ONLY = {'torch': 'torch', 'safetensors': 'safetensors', 'rosbags': 'rosbags',
            'cityscapesscripts': 'cityscapesscripts', 'mcap': 'mcap',
            'mcap_ros2': 'mcap-ros2-support'}
# imported only when asked for, with a clear message when missing (GPU backends)
OPTIONAL = {'torch_tensorrt', 'tensorrt', 'triton'}


def imports(dirs) -> set[str]:
    """Top-level names of absolute imports in the .py files under `dirs` (lazy ones too)."""
    found = set()
    for d in dirs:
        for path in (ROOT / d).rglob('*.py'):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    found |= {a.name.split('.')[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(node.module.split('.')[0])
    local = {p.stem for d in TEST_DIRS for p in (ROOT / d).glob('*.py')}
    return found - set(sys.stdlib_module_names) - {'dovit_ros', '__future__'} - local


def package_xml() -> dict[str, set[str]]:
    root = ET.parse(ROOT / 'package.xml').getroot()
    out: dict[str, set[str]] = {}
    for el in root:
        if el.tag.endswith('depend'):
            out.setdefault(el.tag, set()).add(el.text.strip())
    return out


def third_party(names: set[str]) -> tuple[set[str], set[str]]:
    """(rosdep keys, modules that are in no table)."""
    unknown = names - set(ROSDEP) - set(PIP_ONLY) - OPTIONAL
    return {ROSDEP[n] for n in names if n in ROSDEP}, unknown


def test_every_import_has_a_rosdep_key_or_a_declared_pip_requirement():
    run, test = imports(RUNTIME_DIRS), imports(TEST_DIRS)
    run_keys, unknown_run = third_party(run)
    test_keys, unknown_test = third_party(test - run)
    assert not unknown_run | unknown_test, \
        f'imports in no table (add to package.xml and ROSDEP, or to PIP_ONLY): ' \
        f'{sorted(unknown_run | unknown_test)}'
    deps = package_xml()
    exec_deps = deps.get('exec_depend', set()) | deps.get('depend', set())
    test_deps = deps.get('test_depend', set()) | exec_deps
    assert run_keys <= exec_deps, f'missing exec_depend: {sorted(run_keys - exec_deps)}'
    assert test_keys <= test_deps, f'missing test_depend: {sorted(test_keys - test_deps)}'
    # nothing stale: every key is imported somewhere (ros2launch: the `ros2 launch` verb)
    imported = {ROSDEP[n] for n in run | test if n in ROSDEP} | {'ros2launch'}
    listed = set().union(*deps.values())
    assert listed <= imported, f'package.xml keys nothing imports: {sorted(listed - imported)}'


def test_pip_only_modules_are_declared_in_setup_py():
    setup = (ROOT / 'setup.py').read_text()
    for module, requirement in PIP_ONLY.items():
        assert re.search(rf"'{re.escape(requirement)}[<>=~!;' ]", setup), (module, requirement)


def test_the_check_can_fail():
    # a module outside every table is reported, and a missing key is noticed
    assert third_party({'numpy', 'some_unknown_module'}) == ({'python3-numpy'},
                                                             {'some_unknown_module'})
    assert 'python3-tqdm' in {ROSDEP[n] for n in imports(RUNTIME_DIRS) if n in ROSDEP}
