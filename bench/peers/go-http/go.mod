module urgehttp

go 1.19
