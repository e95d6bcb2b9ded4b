"""A product with its stock, orders of it, and the customers who place them."""

from django.db import models


class Customer(models.Model):
    name = models.CharField(max_length=100)


class Product(models.Model):
    name = models.CharField(max_length=100)
    stock = models.IntegerField()
    sold = models.IntegerField(default=0)


class Order(models.Model):
    product = models.ForeignKey(Product, on_delete=models.CASCADE)
    customer = models.ForeignKey(Customer, null=True, on_delete=models.SET_NULL)
    quantity = models.IntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)
