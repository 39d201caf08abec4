"""SQL scripts: application tables per side and the sync service's own objects."""
