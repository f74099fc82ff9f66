#!/bin/sh
echo "$1 (built on $(uname -m))"
