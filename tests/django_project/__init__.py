"""A small Django project for the Django integration tests (tests/acceptance/test_django.py):
settings that point Django and pg-broker at DJANGO_DATABASE_URL, and one app with tasks."""
