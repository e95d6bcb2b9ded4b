from django.urls import path
from shop import views

urlpatterns = [
    path("buy/<int:product_id>/", views.buy),
    path("products/<int:product_id>/", views.product),
]
