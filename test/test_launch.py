"""launch/segment.launch.py, config/segment.yaml and config/overlay.rviz against the node.

There is no ROS install (no `launch`, `launch_ros`) here, so the launch file is read with ast:
it may name only parameters the node declares (dovit_ros.ros.params.PARAMETERS) and the
node's own topic and executable; the YAML files must parse and set valid values.
"""
import ast
import configparser
import re
from pathlib import Path

import pytest
import yaml

from dovit_ros.ros.node import FRAME_STATS, NODE_NAME
from dovit_ros.ros.params import BY_NAME, ROS_BUILTIN
from dovit_ros.runtime.outputs import OUTPUTS

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / 'launch' / 'segment.launch.py'
PARAMS = ROOT / 'config' / 'segment.yaml'
RVIZ = ROOT / 'config' / 'overlay.rviz'
DECLARED = set(BY_NAME) | set(ROS_BUILTIN)


def calls(tree, name):
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and getattr(n.func, 'id', getattr(n.func, 'attr', None)) == name]


def kwarg(call, name):
    return next((k.value for k in call.keywords if k.arg == name), None)


def const(node):
    return node.value if isinstance(node, ast.Constant) else None


@pytest.fixture(scope='module')
def tree():
    return ast.parse(LAUNCH.read_text(), str(LAUNCH))


def test_launch_arguments(tree):
    declared = [const(c.args[0]) for c in calls(tree, 'DeclareLaunchArgument')]
    assert {'image', 'params_file', 'namespace', 'model', 'use_sim_time'} <= set(declared)
    # every LaunchConfiguration (also through an alias such as `arg = LaunchConfiguration`)
    # names a declared argument
    used = {const(c.args[0]) for c in calls(tree, 'LaunchConfiguration') + calls(tree, 'arg')
            if c.args}
    assert used <= set(declared), used - set(declared)
    defaults = {const(c.args[0]): kwarg(c, 'default_value')
                for c in calls(tree, 'DeclareLaunchArgument')}
    assert const(defaults['image']) == '/camera/image_raw'
    assert const(defaults['model']) == BY_NAME['model'].default
    [join] = [c for c in ast.walk(defaults['params_file']) if isinstance(c, ast.Call)
              and getattr(c.func, 'id', '') == 'PathJoinSubstitution']
    share, *rest = join.args[0].elts
    assert const(share.args[0]) == 'dovit_ros' and share.func.id == 'FindPackageShare'
    assert [const(e) for e in rest] == ['config', 'segment.yaml']


def test_node_action_names_only_what_the_node_declares(tree):
    [node] = calls(tree, 'Node')
    assert const(kwarg(node, 'package')) == 'dovit_ros'
    assert const(kwarg(node, 'name')) == NODE_NAME
    executable = const(kwarg(node, 'executable'))
    setup = (ROOT / 'setup.py').read_text()
    assert re.search(rf"'{executable} = dovit_ros\.ros\.node:main'", setup)
    params = kwarg(node, 'parameters')
    names = [const(k) for d in ast.walk(params) if isinstance(d, ast.Dict) for k in d.keys]
    assert names and set(names) <= DECLARED, set(names) - DECLARED
    remaps = kwarg(node, 'remappings')
    sources = [const(t.elts[0]) for t in ast.walk(remaps) if isinstance(t, ast.Tuple)]
    assert sources == ['image']


def test_launch_exports_large_data_transport(tree):
    [env] = calls(tree, 'SetEnvironmentVariable')
    assert [const(a) for a in env.args] == ['FASTDDS_BUILTIN_TRANSPORTS', 'LARGE_DATA']


def test_scripts_install_where_ros2_launch_looks():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / 'setup.cfg')
    assert cfg['install']['install_scripts'] == '$base/lib/dovit_ros'
    assert "glob('launch/*.py')" in (ROOT / 'setup.py').read_text()


def test_params_file_sets_only_declared_parameters_with_valid_values():
    doc = yaml.safe_load(PARAMS.read_text())
    assert list(doc) == ['/**'] and list(doc['/**']) == ['ros__parameters']
    values = doc['/**']['ros__parameters']
    assert values and set(values) <= DECLARED, set(values) - DECLARED
    for name, value in values.items():
        if name in ROS_BUILTIN:
            continue
        spec = BY_NAME[name]
        assert spec.check(value) is None, (name, spec.check(value))
        # ROS parameter types are strict: 1 is an integer and cannot set a double.
        assert type(value) is spec.kind, (name, value)


def test_rviz_config_shows_node_outputs():
    doc = yaml.safe_load(RVIZ.read_text())
    displays = doc['Visualization Manager']['Displays']
    published = {f'/{NODE_NAME}/{n}' for n in tuple(OUTPUTS) + (FRAME_STATS,)}
    topics = []
    for d in displays:
        assert d['Class'] == 'rviz_default_plugins/Image'
        assert d['Topic']['Reliability Policy'] in ('Reliable', 'Best Effort')
        topics.append(d['Topic']['Value'])
        assert d['Name'] in doc['Window Geometry']   # each image gets its own panel
    assert set(topics) <= published
    assert f'/{NODE_NAME}/overlay' in topics
    assert any('exit_stage' in t for t in topics)


def test_readme_documents_every_parameter_and_launch_argument(tree):
    readme = (ROOT / 'README.md').read_text()
    for name in BY_NAME:
        assert f'`{name}`' in readme, name
    for c in calls(tree, 'DeclareLaunchArgument'):
        assert f'`{const(c.args[0])}`' in readme, const(c.args[0])


XML = ROOT / 'launch' / 'segment.launch.xml'
DEMO = ROOT / 'launch' / 'demo.launch.py'


def test_xml_launch_file_has_the_python_ones_arguments_and_node(tree):
    """Statically, the same arguments (names and defaults), node, parameters and remapping;
    test_ros2_tools.py starts both with `ros2 launch`."""
    import xml.etree.ElementTree as ET
    root = ET.parse(XML).getroot()
    xml_args = {a.get('name'): a.get('default') for a in root.iter('arg')}
    py_args = {const(c.args[0]): kwarg(c, 'default_value')
               for c in calls(tree, 'DeclareLaunchArgument')}
    assert set(xml_args) == set(py_args)
    for name, default in py_args.items():
        if const(default) is not None:   # plain strings; params_file is a substitution
            assert xml_args[name] == const(default), name
    assert xml_args['params_file'] == '$(find-pkg-share dovit_ros)/config/segment.yaml'
    [node] = root.iter('node')
    assert (node.get('pkg'), node.get('exec'), node.get('name')) == \
        ('dovit_ros', 'segment_node', NODE_NAME)
    names = {p.get('name') for p in node.iter('param') if p.get('name')}
    assert names and names <= DECLARED, names - DECLARED
    assert [(r.get('from'), r.get('to')) for r in node.iter('remap')] == \
        [('image', '$(var image)')]
    [env] = root.iter('set_env')
    assert (env.get('name'), env.get('value')) == ('FASTDDS_BUILTIN_TRANSPORTS', 'LARGE_DATA')


def test_demo_launch_file_is_documented_and_names_only_declared_parameters():
    demo = ast.parse(DEMO.read_text(), str(DEMO))
    declared = [const(c.args[0]) for c in calls(demo, 'DeclareLaunchArgument')]
    assert {'bag', 'rate', 'loop', 'rviz', 'image', 'model'} <= set(declared)
    used = {const(c.args[0]) for c in calls(demo, 'LaunchConfiguration') + calls(demo, 'arg')
            if c.args and const(c.args[0])}
    assert used <= set(declared), used - set(declared)
    # the node comes from segment.launch.py (one definition), on sim time; what the demo
    # passes it are that file's own arguments
    seg = ast.parse(LAUNCH.read_text())
    seg_args = {const(c.args[0]) for c in calls(seg, 'DeclareLaunchArgument')}
    [include] = calls(demo, 'IncludeLaunchDescription')
    [passed] = [d for d in ast.walk(include) if isinstance(d, ast.Dict)]
    given = {const(k): v for k, v in zip(passed.keys, passed.values)}
    assert set(given) <= seg_args, set(given) - seg_args
    assert const(given['use_sim_time']) == 'true'
    assert 'segment.launch.py' in ast.unparse(include)
    packages = {const(k.value) for c in calls(demo, 'Node') for k in c.keywords
                if k.arg == 'package'}
    assert packages == {'rviz2'}, packages   # segment_node is not defined a second time
    readme = (ROOT / 'README.md').read_text()
    assert 'demo.launch.py' in readme and 'segment.launch.xml' in readme
    for name in declared:
        assert f'`{name}`' in readme, name
