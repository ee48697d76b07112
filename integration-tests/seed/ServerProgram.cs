using System;
using System.Collections.Generic;
using System.Linq;
using System.Text;
using System.Threading.Tasks;

using System.Net;

class ServerProgram
{
    static void Main(string[] args)
    {
        Console.WriteLine("SERVER RUNNING..\n");

        // [test change] Host, port and run time from the command line instead
        // of Dns.GetHostName() and 12345, the bound address printed, and a
        // bounded wait instead of `while (true) ;`.
        // Usage: ServerProgram HOST PORT [SECONDS]
        string host = args[0];
        int port = int.Parse(args[1]);
        int seconds = args.Length > 2 ? int.Parse(args[2]) : 30;

        IPInformation ipInfo = new IPInformation(host, port);
        Listener listener = new Listener();

        listener.Init(ipInfo.EndPoint, () => new ClientSession());
        Console.WriteLine($"Listening on {listener.LocalEndPoint}");

        for (int i = 0; i < seconds * 10; i++)
            System.Threading.Thread.Sleep(100);
        Environment.Exit(0);
    }
}
