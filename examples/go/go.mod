module libbatchnorm.example/batchnorm

go 1.19
