"""Fixtures of the task pipeline tests (the tiny image-model store lives in tasks_fixtures)."""

from tasks_fixtures import image_store, image_store_template

__all__ = ["image_store", "image_store_template"]
