"""evaluate stage: detections against the fault labels."""
