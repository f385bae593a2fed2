"""People's reviews of a run's masks (Label Studio, COCO) as the ``reviews/`` table."""
