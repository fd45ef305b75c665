"""The node's diagnostics: one status per frame source and the compute budget's state, on
/diagnostics once a second (the node's timer). A mixin of SegmentNode: it reads the node's
configuration, cameras, failures and budget controller, and publishes nothing else."""
from __future__ import annotations

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from .params import FrameConfig


class DiagnosticsMixin:
    """`_publish_diagnostics` for SegmentNode (rclpy Node attributes and the node's own)."""

    def _publish_diagnostics(self) -> None:
        cfg = self.config()
        common = {
            'model': self.model_path, 'backend': self.backend, 'device': self.device,
            'precision': self.precision, 'attention': self.attention, 'threads': self.threads,
            'input scale': f'{self.pipe.input_scale:g}',
            **self.failures.report(),
            'configured threshold': f'{cfg.threshold:.4f}',
            'configured policy': cfg.exits.policy,
            'configured topk per class': cfg.exits.topk_per_class,
            'target latency ms': f'{cfg.target_latency_ms:g}',
            'target gflops': f'{cfg.target_gflops:g}',
        }
        chooser = self._chooser
        if chooser is not None:
            common.update(chooser.report())
        if self.camera_names:
            statuses = self._camera_statuses(cfg, common)
        else:
            statuses = [self._status('compute budget',
                                     *self.cameras[0].report(cfg.target_latency_ms, common))]
        if self.failures.stuck:
            statuses[0].level = DiagnosticStatus.ERROR
            statuses[0].message = self.failures.message()
        array_msg = DiagnosticArray(status=statuses)
        array_msg.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(array_msg)

    def _camera_statuses(self, cfg: FrameConfig, common: dict) -> list[DiagnosticStatus]:
        """Several cameras: the node's status (model, budget, batch sizes; the worst camera's
        level), then one status per camera (its rates, latency, drops, rejections, topics)."""
        reports = [(cam, *cam.report(cfg.target_latency_ms)) for cam in self.cameras]
        level = max(r[1] for r in reports)
        message = '; '.join(f'{cam.name}: {text}' for cam, _, text, _ in reports)
        node = {**common, 'cameras': ', '.join(self.camera_names),
                'batch wait ms': f'{cfg.batch_wait_ms:g}', **self.batch_sizes.report()}
        return [self._status('compute budget', level, message, node)] + [
            self._status(f'camera {cam.name}', lvl, text, kv) for cam, lvl, text, kv in reports]

    def _status(self, what: str, level: int, message: str, kv: dict) -> DiagnosticStatus:
        return DiagnosticStatus(level=bytes([level]), name=f'{self.get_name()}: {what}',
                                message=message, hardware_id=str(self.device),
                                values=[KeyValue(key=k, value=str(v)) for k, v in kv.items()])
