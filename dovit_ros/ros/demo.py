"""`make demo`: a real driving clip through segment_node over DDS, results on the terminal and
in out/demo/.

  1. starts segment_node (the shipped model) as its own process on a fresh ROS_DOMAIN_ID, with
     FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA for every process of the demo;
  2. subscribes to ~/overlay, ~/exit_stage, ~/frame_stats and /diagnostics, and sends the
     clip's first frame a few times to measure how long the node takes per frame;
  3. plays the clip with `dovit-bag play` at its recorded rate, slowed down only when this
     machine segments more slowly than the clip runs (the node keeps the newest frame and
     drops older ones, so at full speed a slow CPU would skip frames);
  4. prints one line per frame, writes NNN_overlay.png and NNN_exit_stage.png per frame and
     contact_sheet.png, and exits 0 only if every frame of the clip produced its outputs.

python -m dovit_ros.ros.demo [--bag CLIP] [--model NAME_OR_DIR] [--rate auto|FACTOR]
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .demo_clip import Clip, find_clip, read_clip, to_rclpy
from .demo_sheet import contact_sheet, image_array, write_rgb

DEFAULT_MODEL = 'camvid-dovit-tiny'
OUT_DIR = Path('out/demo')
OUTPUTS = ('overlay', 'exit_stage')
CALIBRATION_FRAMES = 3
# How long the player and the node may take to discover each other before a pass counts its
# frames lost. 30 s ran out once (CI beside a 2-thread training run on 2 cores: not one frame
# of 30 came back; likely the dead link PLAYER_RESTARTS is for, which 60 s did not cure); the
# CLI tests have measured up to 45 s for discovery on a loaded machine.
PLAYER_DISCOVERY_S = 60.0
# How often a pass may replace a player whose frames reach the demo's own subscription but not
# the node: with LARGE_DATA (Fast DDS 3.2.3) one player-to-node link of a fresh participant
# once stayed silent for good although both ends had matched (CI, 2026-12-02: the node counted
# only the calibration frames while `ros2 topic echo` received the player's); a new player is a
# new participant with new links.
PLAYER_RESTARTS = 2
SHEET_MAX_FRAMES = 30   # the contact sheet's frames, spread over the clip


def frame_line(i: int, n: int, stamp, kv: dict) -> str:
    return (f'frame {i + 1:3d}/{n}  stamp {stamp[0]}.{stamp[1]:09d}  '
            f'model {float(kv["model ms"]):6.1f} ms  latency {float(kv["latency ms"]):6.1f} ms  '
            f'GFLOPs {float(kv["gflops"]):6.2f} / {float(kv["gflops full model"]):.2f} full '
            f'({float(kv["gflops saved pct"]):5.1f}% saved)  '
            f'tokens per stage {kv["tokens per stage"]}')


def parse_args(argv):
    ap = argparse.ArgumentParser(prog='python -m dovit_ros.ros.demo', description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--bag', type=Path, help='rosbag2 clip (default: the shipped one)')
    ap.add_argument('--model', default=DEFAULT_MODEL, help='model name or directory')
    ap.add_argument('--rate', default='auto',
                    help='playback speed factor, or auto: the recorded rate unless this '
                         'machine is slower than the clip (default auto)')
    ap.add_argument('--threads', default='auto',
                    help='torch threads of the node; auto: the cores not busy with other work')
    ap.add_argument('--out', type=Path, default=OUT_DIR, help='output folder (out/demo)')
    ap.add_argument('--threshold', type=float, help='exit threshold xi (default: model\'s)')
    ap.add_argument('--passes', type=int, default=3,
                    help='replay the clip at half the rate while frames are missing, at most '
                         'this many passes in all (default 3)')
    return ap.parse_args(argv)


def auto_threads() -> int:
    """Cores minus the load of other work (a training job, say): oversubscribed OpenMP threads
    make every frame several times slower."""
    cores = os.cpu_count() or 1
    return max(1, min(cores, cores - round(os.getloadavg()[0])))


class Demo:
    def __init__(self, a, clip: Clip):
        from rclpy.qos import QoSProfile

        from .harness import LARGE_DATA, Client, fresh_domain_id, ros_env
        from .node import FRAME_STATS
        self.a, self.clip = a, clip
        self.domain = fresh_domain_id()
        threads = auto_threads() if a.threads == 'auto' else int(a.threads)
        self.env = ros_env(self.domain, LARGE_DATA, threads=threads)
        self.index = {s: i for i, s in enumerate(clip.stamps)}
        self.stats: dict = {}       # stamp -> frame_stats key/values
        self.images: dict = {}      # stamp -> {output: array}
        self.written: set = set()
        self.node = self.player = None
        self.dps = 1
        self.t0, self.phase = time.monotonic(), 'starting'   # said when interrupted
        self.last_output = 0.0          # monotonic time of the newest frame_stats of the clip
        self.first_played: float | None = None   # the current player's first frame, seen here
        print(f'demo: {clip.path.name}: {len(clip.stamps)} frames on {clip.topic} at '
              f'{clip.hz:.1f} Hz; ROS_DOMAIN_ID={self.domain}, '
              f'FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA, node threads {threads}', flush=True)
        self.client = Client(self.domain, LARGE_DATA, name='dovit_demo')
        self.pub = self.client.image_publisher(
            clip.topic if clip.compressed else clip.base_topic, 'reliable',
            compressed=clip.compressed)
        self.client.subscribe(OUTPUTS + (FRAME_STATS,), self._on_message)
        # The player's frames as the node should get them: evidence, when no output comes
        # back, that the player is publishing and only its link to the node is dead.
        self.client.node.create_subscription(self.pub.msg_type, clip.topic, self._on_played,
                                             QoSProfile(depth=5))

    def _on_played(self, msg):
        from .harness import stamp_of
        if self.first_played is None and stamp_of(msg) in self.index:
            self.first_played = time.monotonic()

    def _on_message(self, name, msg):
        from .harness import diag_values, stamp_of
        from .node import FRAME_STATS
        stamp = stamp_of(msg)
        if name == FRAME_STATS:
            self.stats[stamp] = diag_values(msg.status[0])
            if stamp in self.index:
                self.last_output = time.monotonic()
        else:
            self.images.setdefault(stamp, {})[name] = image_array(msg)

    def start_node(self) -> bool:
        from ..runtime.artifacts import read_meta
        from ..runtime.pipeline import resolve_model_path
        from .harness import NodeProcess
        a, clip = self.a, self.clip
        # The player is reliable: a reliable subscription also recovers the first frames, sent
        # before the node has discovered the player (auto would pick the same, given time).
        ros_args = ['-p', f'model:={a.model}', '-r', f'image:={clip.base_topic}',
                    '-p', 'qos_reliability:=reliable']
        if clip.compressed:
            ros_args += ['-p', 'image_transport:=compressed']
        if a.threshold is not None:
            ros_args += ['-p', f'threshold:={a.threshold}']
        self.node = NodeProcess(ros_args, self.env)
        if not self.node.wait_for('ready', 300.0):
            print(f'demo: segment_node did not start:\n{self.node.output}', file=sys.stderr)
            return False
        print('demo: segment_node ready: ' + next(
            (ln.split(']: ', 1)[-1] for ln in self.node.lines if 'QoS' in ln), ''), flush=True)
        self.dps = len(read_meta(resolve_model_path(a.model)).architecture.decision_points)
        return True

    def calibrate(self) -> float | None:
        """Seconds per frame: the clip's first frame, stamped outside the clip, sent until it
        comes back (which also proves the node has matched our subscriptions), then twice
        more, one at a time."""
        c, clip = self.client, self.clip

        def msg(s):
            return to_rclpy(clip.first, clip.compressed, s)
        first = c.send_until_output(self.pub, msg, (0, 1), timeout=180.0, period=5.0)
        if first is None:
            return None
        lat = []
        for k in range(1, CALIBRATION_FRAMES):
            s = (first[0], first[1] + k)
            self.pub.publish(msg(s))
            if c.spin_until(lambda s=s: s in self.stats, 120.0):
                lat.append(float(self.stats[s]['latency ms']))
        return (max(lat) if lat else 1000.0) / 1e3

    def flush(self) -> bool:
        """Print and write every newly complete frame; True when all are done."""
        from ..runtime.viz import color_stages
        for s in sorted(set(self.clip.stamps) - self.written):
            if s in self.stats and all(n in self.images.get(s, {}) for n in OUTPUTS):
                i = self.index[s]
                print(frame_line(i, len(self.clip.stamps), s, self.stats[s]), flush=True)
                write_rgb(self.a.out / f'{i:03d}_overlay.png', self.images[s]['overlay'])
                write_rgb(self.a.out / f'{i:03d}_exit_stage.png',
                          color_stages(self.images[s]['exit_stage'], self.dps))
                self.written.add(s)
        return len(self.written) == len(self.clip.stamps)

    def play(self, rate: float, per_frame_s: float) -> bool:
        """One pass: `dovit-bag play --loop` until every frame has its outputs or two loops
        have gone by. Looping matters: the player starts as soon as it sees the node's
        subscription, and a frame sent before the node has in turn discovered the player is
        lost (a volatile reader ignores what a writer sent before they matched), so the first
        frame of the first loop usually is. A player whose frames stop reaching the node is
        replaced, up to PLAYER_RESTARTS times. False when the player failed."""
        for restart in range(PLAYER_RESTARTS + 1):
            outcome = self.play_once(rate, per_frame_s)
            if outcome != 'stalled':
                return outcome == 'done'
            then = ('giving up on this pass' if restart == PLAYER_RESTARTS else
                    f'starting a new player ({restart + 1}/{PLAYER_RESTARTS})')
            print("demo: the player's frames arrive here but nothing comes back from "
                  'segment_node (a dead player-to-node DDS link, seen with LARGE_DATA, or a '
                  f'stuck node); {then}', flush=True)
        return True

    def play_once(self, rate: float, per_frame_s: float) -> str:
        """One player until the frames are done or the time is up ('done'), its frames stop
        reaching the node ('stalled'), or it fails ('failed')."""
        clip = self.clip
        exe = Path(sys.executable).with_name('dovit-bag')   # the console script, if installed
        cmd = [str(exe)] if exe.is_file() else [sys.executable, '-m', 'dovit_ros.cli.bag']
        cmd += ['play', str(clip.path), '-q', '--loop', '--rate', f'{rate:g}',
                '--wait-for-subscribers', f'{PLAYER_DISCOVERY_S:g}', '--topics', clip.topic]
        self.first_played = None
        self.player = subprocess.Popen(cmd, env=self.env, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True)
        n = len(clip.stamps)
        loop_s = (clip.log_times[-1] - clip.log_times[0]) / 1e9 * n / max(n - 1, 1) / rate
        deadline = time.monotonic() + PLAYER_DISCOVERY_S + 2 * loop_s + 3 * per_frame_s
        # the node keeps the newest frame, so some output follows within a few frames
        stall_s = 5.0 + 4 * loop_s / n + 3 * per_frame_s
        outcome = 'done'
        while self.player.poll() is None and time.monotonic() < deadline:
            if self.client.spin_until(self.flush, 0.2):
                break
            if self.stalled(stall_s):
                outcome = 'stalled'
                break
        failed = self.player.poll() is not None   # --loop only ends on an error
        self.stop_player()
        if failed:
            out = self.player.communicate()[0]
            print(f'demo: dovit-bag play ended with {self.player.returncode}:\n{out}',
                  file=sys.stderr)
            return 'failed'
        return outcome

    def stalled(self, stall_s: float) -> bool:
        """The player's frames have been arriving here for stall_s without one output from
        the node since."""
        if self.first_played is None:
            return False
        return time.monotonic() - max(self.first_played, self.last_output) > stall_s

    def dropped(self) -> int:
        """The node's 'frames dropped' count, from a fresh /diagnostics message."""
        kv = self.client.latest_diagnostics(lambda kv: 'frames dropped' in kv, 2.5) or \
            self.client.last_diagnostics() or {}
        return int(kv.get('frames dropped', 0))

    def stop_player(self) -> None:
        if self.player is not None and self.player.poll() is None:
            self.player.send_signal(signal.SIGINT)
            try:
                self.player.wait(5)
            except subprocess.TimeoutExpired:
                self.player.kill()
                self.player.wait()

    def summary(self) -> None:
        from ..runtime.viz import color_stages
        got = [s for s in self.clip.stamps if s in self.written]
        frames = [(self.index[s], self.images[s]['overlay'],
                   color_stages(self.images[s]['exit_stage'], self.dps),
                   f'#{self.index[s] + 1}  '
                   f'{float(self.stats[s]["gflops saved pct"]):.0f}% GFLOPs saved')
                  for s in got]
        if len(frames) > SHEET_MAX_FRAMES:
            keep = np.linspace(0, len(frames) - 1, SHEET_MAX_FRAMES).round().astype(int)
            frames = [frames[i] for i in keep]
        if frames:
            write_rgb(self.a.out / 'contact_sheet.png', contact_sheet(frames, self.dps))
        saved = [float(self.stats[s]['gflops saved pct']) for s in got]
        print(f'demo: {len(got)}/{len(self.clip.stamps)} frames segmented'
              + (f', {np.mean(saved):.1f}% of the GFLOPs saved on average' if saved else ''))
        diag = self.client.latest_diagnostics(lambda kv: 'latency p50 ms' in kv, 3.0) or {}
        if diag:
            print('demo: node diagnostics: ' + ', '.join(
                f'{k} {diag[k]}' for k in (
                    'frames in', 'frames out', 'frames dropped', 'frames rejected',
                    'latency p50 ms', 'latency p95 ms', 'model ms mean', 'threshold', 'policy',
                    'backend', 'device') if k in diag))
        print(f'demo: images in {self.a.out}/ (NNN_overlay.png, NNN_exit_stage.png, '
              f'contact_sheet.png), node log {self.a.out / "node.log"}')

    def whereabouts(self) -> str:
        return (f'after {time.monotonic() - self.t0:.0f} s, while {self.phase}, with '
                f'{len(self.written)}/{len(self.clip.stamps)} frames done')

    def run(self) -> int:
        a, clip = self.a, self.clip
        self.phase = 'starting segment_node'
        if not self.start_node():
            return 1
        self.phase = 'sending the calibration frames'
        per_frame_s = self.calibrate()
        if per_frame_s is None:   # the DDS links tell a frame that never reached the node
            # from an output that never came back
            print(f'demo: no output from segment_node:\n{self.client.link_report(self.pub)}\n'
                  f'{self.node.output}', file=sys.stderr)
            return 1
        if a.rate == 'auto':   # 2x headroom: CPU contention, the player and PNG writing
            need = per_frame_s * 2.0 * clip.hz
            rate = 1.0 if need <= 1.0 else 1.0 / need
        else:
            rate = float(a.rate)
        for n in range(max(1, a.passes)):
            note = 'the recorded rate' if rate == 1.0 else \
                f'{rate:.3g}x the recorded rate ({clip.hz * rate:.2f} Hz)'
            if n == 0 and rate < 1.0 and a.rate == 'auto':
                note += (f': this machine takes ~{per_frame_s * 1e3:.0f} ms per frame and the '
                         'node keeps only the newest')
            print(f'demo: playing {clip.path.name} at {note}', flush=True)
            self.phase = f'playing pass {n + 1}'
            dropped = self.dropped()
            if not self.play(rate, per_frame_s):
                break
            missing = len(clip.stamps) - len(self.written)
            if not missing or n + 1 >= a.passes:
                break
            if self.dropped() > dropped:
                rate /= 2
                why = 'the node dropped frames while busy; replaying the clip slower'
            else:
                why = 'not received by the node; replaying the clip'
            print(f'demo: {missing} frame(s) got no outputs: {why}', flush=True)
        self.phase = 'summing up'
        self.summary()
        missing = len(clip.stamps) - len(self.written)
        if missing:
            print(f'demo: FAILED: {missing} frame(s) of {len(clip.stamps)} without outputs; '
                  'try a lower --rate', file=sys.stderr)
            return 1
        return 0

    def close(self, interrupted: bool, code: int, exit_fn=os._exit) -> None:
        """Stop the player and the node, then the demo's own participant. Deleting a LARGE_DATA
        participant can deadlock in Fast DDS 3.2.3's TCP transport (see segmenter's
        exit_if_stuck), and a demo whose result is printed must still exit: past TEARDOWN_S
        the process exits with `code` without that teardown."""
        from .segmenter import TEARDOWN_S, exit_if_stuck
        self.stop_player()
        if self.node is not None:
            rc = self.node.stop(signal.SIGINT)
            (self.a.out / 'node.log').write_text(self.node.output + '\n')
            if rc != 0:
                print(f'demo: segment_node exited with {rc}', file=sys.stderr)
        if not interrupted:   # an rclpy node interrupted mid-spin may not be destroyable
            guard = exit_if_stuck(TEARDOWN_S, code, Logger(), exit_fn)
            self.client.close()
            guard.cancel()


class Logger:
    """exit_if_stuck's log for a process whose terminal is the log."""

    def error(self, text: str) -> None:
        print(f'demo: {text}', file=sys.stderr, flush=True)


def main(argv=None) -> int:
    a = parse_args(argv)
    bag = a.bag or find_clip()
    if bag is None or not Path(bag).exists():
        print(f'demo: no clip found ({bag or "config/demo/*.mcap"}); pass --bag',
              file=sys.stderr)
        return 2
    clip = read_clip(Path(bag))
    a.out.mkdir(parents=True, exist_ok=True)
    for old in list(a.out.glob('*_overlay.png')) + list(a.out.glob('*_exit_stage.png')):
        old.unlink()
    demo = Demo(a, clip)
    interrupted, code = False, 1
    try:
        code = demo.run()
        return code
    except KeyboardInterrupt:
        interrupted, code = True, 130
        print(f'demo: interrupted {demo.whereabouts()}', file=sys.stderr)
        return code
    finally:
        demo.close(interrupted, code)
        sys.stdout.flush()
        if interrupted:
            os._exit(130)


if __name__ == '__main__':
    sys.exit(main())
