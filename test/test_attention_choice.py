"""scripts/attention_choice.py: fresh processes that load the model as the node does, each
reporting the attention core its start-up timing chose."""
import json

from dovit_ros.model.vit import ATTENTION_CORES
from script_module import load_script


def test_each_process_reports_its_choice_and_the_timings_behind_it(tmp_path):
    m = load_script('attention_choice')
    out = tmp_path / 'choice.json'
    assert m.main(['--precision', 'fp32', '--threads', '1', '--processes', '2',
                   '--json', str(out)]) == 0
    r = json.loads(out.read_text())
    assert (r['precision'], r['threads'], len(r['runs'])) == ('fp32', 1, 2)
    for run in r['runs']:
        # 'auto' measured both cores in that process, even where the suite pins sdpa
        assert set(run['ms']) == set(ATTENTION_CORES) and all(t > 0 for t in run['ms'].values())
        margin = run['ms']['matmul'] <= 0.9 * run['ms']['sdpa']
        assert run['core'] == ('matmul' if margin else 'sdpa')
    assert sum(r['chosen'].values()) == 2
