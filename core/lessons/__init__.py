"""Lessons: links and files that open the app on a ready setup for a class, with notes for the teacher."""
