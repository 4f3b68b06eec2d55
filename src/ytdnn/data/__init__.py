"""Data layer: the impression-log schema, readers (KuaiRand-Pure, ytdnn layout), split, download, simulator."""
