"""Segmentation datasets (Cityscapes, CamVid, user folders), class tables and augmentation."""
from .base import DatasetError
from .classes import ClassInfo
from .datasets import load_dataset

__all__ = ['load_dataset', 'ClassInfo', 'DatasetError']
